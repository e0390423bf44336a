/// One piece of membership news: a member's own signed record, or a signed claim about its status.
public enum MembershipUpdate: Sendable, Equatable {
    case alive(MemberRecord)
    case claim(StatusClaim)

    /// The member the news is about.
    public var subject: NodeID {
        switch self {
        case .alive(let record): return record.nodeID
        case .claim(let claim): return claim.target
        }
    }
}

/// The SWIM messages, exchanged over authenticated sessions (so the sender is always known). Every probe message
/// piggybacks membership updates (dissemination by infection, SWIM §4).
public enum MembershipMessage: Sendable, Equatable {
    /// Direct probe.
    case ping(sequence: UInt32, updates: [MembershipUpdate])
    /// Answer to a ping, from the probed member.
    case ack(sequence: UInt32, updates: [MembershipUpdate])
    /// "Please probe `target` for me" (SWIM §3.1 indirect probe).
    case pingRequest(sequence: UInt32, target: NodeID, updates: [MembershipUpdate])
    /// An intermediary reporting that `target` answered its probe.
    case indirectAck(sequence: UInt32, target: NodeID, updates: [MembershipUpdate])
    /// An intermediary reporting that `target` did not answer in time (Lifeguard's nack, §IV-A).
    case nack(sequence: UInt32, target: NodeID)
    /// Updates pushed without a probe, to speed dissemination.
    case gossip(updates: [MembershipUpdate])
    /// Full state exchange (anti-entropy). A request is answered with a reply carrying the responder's state.
    case pushPull(isReply: Bool, updates: [MembershipUpdate])

    enum Tag: UInt8 {
        case ping = 1, ack, pingRequest, indirectAck, nack, gossip, pushPull
    }

    /// Bounds a decoder honours so a peer cannot make it allocate without limit.
    public static let maximumUpdates = 100_000

    public var updates: [MembershipUpdate] {
        switch self {
        case .ping(_, let updates), .ack(_, let updates), .pingRequest(_, _, let updates),
            .indirectAck(_, _, let updates), .gossip(let updates), .pushPull(_, let updates):
            return updates
        case .nack:
            return []
        }
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(capacity: 64 + self.updates.count * 200)
        switch self {
        case .ping(let sequence, _):
            writer.u8(Tag.ping.rawValue)
            writer.u32(sequence)
        case .ack(let sequence, _):
            writer.u8(Tag.ack.rawValue)
            writer.u32(sequence)
        case .pingRequest(let sequence, let target, _):
            writer.u8(Tag.pingRequest.rawValue)
            writer.u32(sequence)
            writer.nodeID(target)
        case .indirectAck(let sequence, let target, _):
            writer.u8(Tag.indirectAck.rawValue)
            writer.u32(sequence)
            writer.nodeID(target)
        case .nack(let sequence, let target):
            writer.u8(Tag.nack.rawValue)
            writer.u32(sequence)
            writer.nodeID(target)
        case .gossip:
            writer.u8(Tag.gossip.rawValue)
        case .pushPull(let isReply, _):
            writer.u8(Tag.pushPull.rawValue)
            writer.u8(isReply ? 1 : 0)
        }
        writer.u32(UInt32(self.updates.count))
        for update in self.updates {
            switch update {
            case .alive(let record):
                writer.u8(1)
                record.encode(into: &writer)
            case .claim(let claim):
                writer.u8(2)
                claim.encode(into: &writer)
            }
        }
        return writer.bytes
    }

    public enum DecodeError: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        case record(MemberRecord.DecodeError)

        public var description: String {
            switch self {
            case .malformed(let what): return "malformed membership message: \(what)"
            case .record(let error): return error.description
            }
        }
    }

    public init(decoding bytes: [UInt8]) throws(DecodeError) {
        var reader = ByteReader(bytes)
        do {
            guard let tag = Tag(rawValue: try reader.u8("tag")) else { throw DecodeError.malformed("unknown tag") }
            let header: (UInt32, NodeID?, Bool)
            switch tag {
            case .ping, .ack: header = (try reader.u32("sequence"), nil, false)
            case .pingRequest, .indirectAck, .nack: header = (try reader.u32("sequence"), try reader.nodeID("target"), false)
            case .gossip: header = (0, nil, false)
            case .pushPull:
                let flag = try reader.u8("reply flag")
                guard flag <= 1 else { throw DecodeError.malformed("reply flag") }
                header = (0, nil, flag == 1)
            }
            let count = Int(try reader.u32("update count"))
            // Each update takes well over 40 bytes, so a count the remaining bytes cannot hold is refused up front.
            guard count <= Self.maximumUpdates, count <= reader.remaining / 40 + 1 else {
                throw DecodeError.malformed("update count \(count)")
            }
            var updates: [MembershipUpdate] = []
            updates.reserveCapacity(count)
            for _ in 0..<count {
                switch try reader.u8("update kind") {
                case 1:
                    do { updates.append(.alive(try MemberRecord.decode(from: &reader))) } catch {
                        throw DecodeError.record(error)
                    }
                case 2:
                    guard let claim = try StatusClaim.decode(from: &reader) else {
                        throw DecodeError.malformed("claim kind")
                    }
                    updates.append(.claim(claim))
                default:
                    throw DecodeError.malformed("update kind")
                }
            }
            guard reader.isAtEnd else { throw DecodeError.malformed("\(reader.remaining) trailing bytes") }
            let (sequence, target, isReply) = header
            switch tag {
            case .ping: self = .ping(sequence: sequence, updates: updates)
            case .ack: self = .ack(sequence: sequence, updates: updates)
            case .pingRequest: self = .pingRequest(sequence: sequence, target: target!, updates: updates)
            case .indirectAck: self = .indirectAck(sequence: sequence, target: target!, updates: updates)
            case .nack:
                guard updates.isEmpty else { throw DecodeError.malformed("nack with updates") }
                self = .nack(sequence: sequence, target: target!)
            case .gossip: self = .gossip(updates: updates)
            case .pushPull: self = .pushPull(isReply: isReply, updates: updates)
            }
        } catch let error as DecodeError {
            throw error
        } catch {
            throw .malformed("\(error)")
        }
    }
}
