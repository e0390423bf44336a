import MeshCrypto

/// A 128-bit id, written as 32 hex digits, of one kind of thing: a task, an event or a workflow run. The kinds are
/// apart in the type system (an event's id cannot be passed where a task's is taken); where one must become
/// another (a workflow step's task id derived from its run's), ``init(_:)`` says so.
public struct MeshID<Kind: MeshIDKind>: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The same 128 bits as an id of another kind.
    public init<Other>(_ other: MeshID<Other>) {
        self.init(high: other.high, low: other.low)
    }

    public init(using generator: inout some RandomNumberGenerator) {
        self.init(high: generator.next(), low: generator.next())
    }

    public init?(hex: some StringProtocol) {
        guard let bytes = Hex.decode(hex), bytes.count == 16 else { return nil }
        self.high = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        self.low = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }

    public var description: String {
        Hex.encode((0..<8).map { UInt8(truncatingIfNeeded: self.high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: self.low >> (56 - 8 * $0)) })
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.high, lhs.low) < (rhs.high, rhs.low) }
}

public protocol MeshIDKind: Sendable {
    /// What the id names, with its article, for error messages ("'x' is not an event id").
    static var name: String { get }
}

public enum TaskIDKind: MeshIDKind { public static let name = "a task" }
public enum EventIDKind: MeshIDKind { public static let name = "an event" }
public enum WorkflowIDKind: MeshIDKind { public static let name = "a workflow" }

/// A task's id: 16 random bytes chosen by the submitting node. It makes every step of the task protocol idempotent:
/// a repeated offer, result or acknowledgement for the same id and epoch is harmless.
public typealias TaskID = MeshID<TaskIDKind>
/// An event's id, chosen by its publisher: every node acts on an event once.
public typealias EventID = MeshID<EventIDKind>
/// A workflow run's id, chosen by the node that owns the run.
public typealias WorkflowID = MeshID<WorkflowIDKind>

/// Why an executor would not take a task. The submitter routes the task elsewhere.
public enum DeclineReason: UInt8, Sendable, Equatable, CustomStringConvertible {
    case busy = 1
    case rateLimited = 2
    case unknownCapability = 3
    case draining = 4
    /// The offer's epoch is older than one the executor already accepted for this task.
    case staleEpoch = 5
    /// The executor cannot make the task durable (its disk is full or its store is failing).
    case storageUnavailable = 6

    public var description: String {
        switch self {
        case .busy: return "busy"
        case .rateLimited: return "rate_limited"
        case .unknownCapability: return "unknown_capability"
        case .draining: return "draining"
        case .staleEpoch: return "stale_epoch"
        case .storageUnavailable: return "storage_unavailable"
        }
    }
}

/// How one run of a task ended.
public enum TaskOutcome: Sendable, Equatable {
    /// The executor's output (JSON for every built-in executor).
    case success([UInt8])
    /// The run failed; another attempt may succeed (a crash, a service that is down).
    case failure(String)
    /// The executor refused the input for good (`http:` 4xx other than 408 and 429, `exec:` exit status 65): the
    /// task fails without another attempt.
    case rejected(String)
    /// The run reached the task's deadline and was stopped: the task has timed out.
    case timedOut(String)
    case canceled
}

/// What a submitter may ask of a task beyond its input: a conversation it belongs to, and whether its deadline
/// pauses while the agent waits for a person's answer.
public struct TaskOptions: Sendable, Equatable {
    /// Groups related tasks (A2A's `contextId`): they prefer the member that ran the previous one, and the agent is
    /// told the id so it can keep its memory per conversation.
    public var context: String?
    /// Set: while the agent waits for an answer the deadline pauses, and the wait may last this long.
    public var inputTimeout: Duration?
    /// W3C trace context: on the submitter, the client's (or one made up); in an offer, the submitter's task span.
    public var traceparent: String?

    public init(context: String? = nil, inputTimeout: Duration? = nil, traceparent: String? = nil) {
        self.context = context
        self.inputTimeout = inputTimeout
        self.traceparent = traceparent
    }

    public static let maximumContextLength = 128

    public static func isValidContext(_ context: String) -> Bool {
        (1...Self.maximumContextLength).contains(context.utf8.count) && context.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }
}

/// An offer of a task to a capable member. `epoch` numbers the attempts: a newer epoch supersedes older ones.
/// `timeRemaining` is relative, so the two nodes' clocks never have to agree.
public struct TaskOffer: Sendable, Equatable {
    public let id: TaskID
    public let epoch: UInt32
    public let capability: String
    public let input: [UInt8]
    public let timeRemaining: Duration
    public let options: TaskOptions

    public init(
        id: TaskID, epoch: UInt32, capability: String, input: [UInt8], timeRemaining: Duration, options: TaskOptions = TaskOptions()
    ) {
        self.id = id
        self.epoch = epoch
        self.capability = capability
        self.input = input
        self.timeRemaining = timeRemaining
        self.options = options
    }
}

/// The peer-to-peer task protocol: offers go from the submitting node to an executor, results come straight
/// back, and both ends keep what they need until the other acknowledges it.
public enum TaskMessage: Sendable, Equatable {
    case offer(TaskOffer)
    /// The executor has persisted the task and commits to run it.
    case accept(TaskID, epoch: UInt32)
    case decline(TaskID, epoch: UInt32, reason: DeclineReason)
    case result(TaskID, epoch: UInt32, outcome: TaskOutcome)
    /// The submitter has persisted the result; the executor may forget it.
    case resultAck(TaskID, epoch: UInt32)
    case cancel(TaskID, epoch: UInt32)
    /// From an executor that restarted holding this unfinished task: may it run it? Answered with `resume` when the
    /// epoch is still current, with `cancel` when the task moved on, so a restarted executor never runs a task
    /// concurrently with the peer it was re-offered to.
    case held(TaskID, epoch: UInt32)
    /// The submitter's go-ahead for a held task.
    case resume(TaskID, epoch: UInt32)
    /// Executor → submitter while the run goes on: bytes the executor wrote to stderr (at most `maximumLogChunk`).
    case log(TaskID, epoch: UInt32, chunk: [UInt8])
    /// Executor → submitter while the run goes on: progress events (each a JSON value the agent emitted), numbered
    /// within the run from `first`, so a repeated or reordered batch is recognised.
    case progress(TaskID, epoch: UInt32, first: UInt32, events: [[UInt8]])
    /// A published event, passed from node to node (see ``EventBus``); its id rides in the task-id field. Sent with
    /// tag 18 and its publisher's signature; tag 11, the unsigned form of earlier builds, is refused.
    case event(MeshEvent)
    /// The receiver has the event.
    case eventAck(EventID)
    /// Executor → submitter: the agent asks a question (JSON) and waits for a person's answer.
    case inputRequired(TaskID, epoch: UInt32, question: [UInt8])
    /// Submitter → executor: the answer (JSON), and the time the run has left from now on.
    case input(TaskID, epoch: UInt32, reply: [UInt8], timeRemaining: Duration)
    /// Either way, from the node that needs an artifact of the task: send `length` bytes of it from `offset`.
    case artifactRequest(TaskID, digest: [UInt8], offset: UInt64, length: UInt32)
    /// The answer: bytes of the artifact from `offset`, with the owner's SHA-256 chaining value after them (empty
    /// after the last chunk, which the whole digest checks), so the receiver spots a damaged chunk at once.
    /// The bytes are a slice of the received message: a megabyte is not copied out of it again.
    case artifactChunk(TaskID, digest: [UInt8], offset: UInt64, chainingValue: [UInt8], bytes: ArraySlice<UInt8>)
    /// The owner cannot serve the artifact for this task (it does not have it, or the task does not reference it).
    case artifactUnavailable(TaskID, digest: [UInt8], reason: String)

    public static let maximumLogChunk = 4 * 1024
    /// One progress event's JSON, at most; an agent's longer event is replaced by a note saying so.
    public static let maximumProgressEvent = 16 * 1024
    /// The events one `progress` message carries together, at most (by count and by bytes).
    public static let maximumProgressBatch = 256
    public static let maximumProgressBatchBytes = 64 * 1024

    public static let maximumInputLength = 16 * 1024 * 1024 - 1024
    /// An artifact chunk's bytes, at most; requests ask for whole multiples of the SHA-256 block below it.
    public static let maximumArtifactChunk = 1024 * 1024

    /// A task message's tag on the wire, in one place for the encoder, the decoder and the audit log's names. The
    /// values are part of the protocol: new kinds are only ever appended (11, the unsigned event of earlier builds,
    /// is retired and refused).
    public enum Kind: UInt8, CaseIterable, Sendable {
        case offer = 1, accept, decline, result, resultAck, cancel, held, resume, log, progress
        case unsignedEvent = 11
        case eventAck = 12, inputRequired, input, artifactRequest, artifactChunk, artifactUnavailable, event

        /// How the audit log names it.
        public var name: String {
            switch self {
            case .offer: return "offer"
            case .accept: return "accept"
            case .decline: return "decline"
            case .result: return "result"
            case .resultAck: return "result-ack"
            case .cancel: return "cancel"
            case .held: return "held"
            case .resume: return "resume"
            case .log: return "log"
            case .progress: return "progress"
            case .unsignedEvent, .event: return "event"
            case .eventAck: return "event-ack"
            case .inputRequired: return "input-required"
            case .input: return "input"
            case .artifactRequest: return "artifact-request"
            case .artifactChunk: return "artifact-chunk"
            case .artifactUnavailable: return "artifact-unavailable"
            }
        }
    }

    /// The message's tag on the wire.
    public var tag: UInt8 { self.kind.rawValue }

    public static func name(ofTag tag: UInt8) -> String { Kind(rawValue: tag)?.name ?? "" }

    public var epoch: UInt32 {
        switch self {
        case .offer(let offer): return offer.epoch
        case .accept(_, let epoch), .decline(_, let epoch, _), .result(_, let epoch, _), .resultAck(_, let epoch),
            .cancel(_, let epoch), .held(_, let epoch), .resume(_, let epoch), .log(_, let epoch, _),
            .progress(_, let epoch, _, _), .inputRequired(_, let epoch, _), .input(_, let epoch, _, _):
            return epoch
        case .event, .eventAck, .artifactRequest, .artifactChunk, .artifactUnavailable:
            return 0
        }
    }

    /// The digest the audit log and the session transcript keep. An artifact chunk's is over everything but its
    /// bytes: the owner's chaining value in it commits to them, and the receiver checks that value against the
    /// bytes, so a gigabyte is hashed once on its way, not once more for the record.
    public func auditDigest(wireBytes: [UInt8]) -> [UInt8] {
        self.auditDigest(wireParts: [wireBytes[...]])
    }

    /// ``auditDigest(wireBytes:)`` of the message's bytes in parts, one after another.
    public func auditDigest(wireParts: [ArraySlice<UInt8>]) -> [UInt8] {
        var left = wireParts.reduce(0) { $0 + $1.count }
        if case .artifactChunk(_, _, _, _, let bytes) = self, bytes.count <= left { left -= bytes.count }
        var hasher = SHA256.Hasher()
        for part in wireParts where left > 0 {
            part.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[..<min($0.count, left)])) }
            left -= min(part.count, left)
        }
        return hasher.finalize()
    }

    /// Whether ``auditDigest(wireBytes:)`` is the SHA-256 of all the message's bytes: of every message but an
    /// artifact chunk.
    public var digestCoversWholeMessage: Bool {
        if case .artifactChunk = self { return false }
        return true
    }

    /// ``digestCoversWholeMessage`` told only the message's tag (its first byte).
    public static func digestCoversWholeMessage(tag: UInt8) -> Bool { tag != Kind.artifactChunk.rawValue }

    /// Which message this is, as its tag says on the wire.
    public var kind: Kind {
        switch self {
        case .offer: return .offer
        case .accept: return .accept
        case .decline: return .decline
        case .result: return .result
        case .resultAck: return .resultAck
        case .cancel: return .cancel
        case .held: return .held
        case .resume: return .resume
        case .log: return .log
        case .progress: return .progress
        case .event: return .event
        case .eventAck: return .eventAck
        case .inputRequired: return .inputRequired
        case .input: return .input
        case .artifactRequest: return .artifactRequest
        case .artifactChunk: return .artifactChunk
        case .artifactUnavailable: return .artifactUnavailable
        }
    }

    /// The id in the message's header: the task's, or an event's for event messages (the audit log's task column
    /// holds either).
    public var taskID: TaskID {
        switch self {
        case .offer(let offer): return offer.id
        case .accept(let id, _), .decline(let id, _, _), .result(let id, _, _), .resultAck(let id, _), .cancel(let id, _),
            .held(let id, _), .resume(let id, _), .log(let id, _, _), .progress(let id, _, _, _),
            .inputRequired(let id, _, _), .input(let id, _, _, _), .artifactRequest(let id, _, _, _),
            .artifactChunk(let id, _, _, _, _), .artifactUnavailable(let id, _, _):
            return id
        case .event(let event):
            return TaskID(event.id)
        case .eventAck(let id):
            return TaskID(id)
        }
    }

    /// The message's bytes, after `prefix` when given (the wire's message kind): written once, at their full size.
    public func encoded(after prefix: UInt8? = nil) -> [UInt8] {
        self.write(after: prefix, apart: false).bytes
    }

    /// The message's bytes as parts to be sent one after another: a large input, result or artifact chunk is a part
    /// of its own, the very array the message holds, so it is copied only into the frames that carry it.
    public func encodedParts(after prefix: UInt8? = nil) -> [ArraySlice<UInt8>] {
        self.write(after: prefix, apart: true).parts
    }

    private func write(after prefix: UInt8?, apart: Bool) -> ByteWriter {
        var writer = ByteWriter(capacity: 128 + (apart ? 0 : self.payloadLength))
        if let prefix { writer.u8(prefix) }
        /// A large byte string, length-prefixed: copied in, or (`apart`) left as a part of its own.
        func longBytes(_ value: ArraySlice<UInt8>) {
            writer.u32(UInt32(value.count))
            if apart { writer.rawApart(value) } else { writer.raw(value) }
        }
        func header(_ id: TaskID, _ epoch: UInt32) {
            writer.u8(self.tag)
            writer.u64(id.high)
            writer.u64(id.low)
            writer.u32(epoch)
        }
        switch self {
        case .offer(let offer):
            header(offer.id, offer.epoch)
            writer.shortString(offer.capability)
            writer.u64(Self.milliseconds(offer.timeRemaining))
            longBytes(offer.input[...])
            writer.shortString(offer.options.context ?? "")
            writer.u64(offer.options.inputTimeout.map(Self.milliseconds) ?? 0)
            writer.shortString(offer.options.traceparent ?? "")
        case .accept(let id, let epoch):
            header(id, epoch)
        case .decline(let id, let epoch, let reason):
            header(id, epoch)
            writer.u8(reason.rawValue)
        case .result(let id, let epoch, let outcome):
            header(id, epoch)
            switch outcome {
            case .success(let output):
                writer.u8(1)
                longBytes(output[...])
            case .failure(let message):
                writer.u8(2)
                writer.longBytes(Array(message.utf8))
            case .canceled:
                writer.u8(3)
            case .rejected(let message):
                writer.u8(4)
                writer.longBytes(Array(message.utf8))
            case .timedOut(let message):
                writer.u8(5)
                writer.longBytes(Array(message.utf8))
            }
        case .resultAck(let id, let epoch):
            header(id, epoch)
        case .cancel(let id, let epoch):
            header(id, epoch)
        case .held(let id, let epoch):
            header(id, epoch)
        case .resume(let id, let epoch):
            header(id, epoch)
        case .log(let id, let epoch, let chunk):
            header(id, epoch)
            writer.longBytes(chunk)
        case .progress(let id, let epoch, let first, let events):
            header(id, epoch)
            writer.u32(first)
            writer.u16(UInt16(events.count))
            for event in events { writer.longBytes(event) }
        case .event(let event):
            // An event without a seal (kept from before events were signed) is never sent; were it, the receiver
            // would refuse the zero key.
            header(TaskID(event.id), 0)
            writer.shortString(event.topic)
            writer.raw(event.seal?.originKey.bytes ?? [UInt8](repeating: 0, count: Ed25519PublicKey.byteCount))
            writer.u64(UInt64(bitPattern: event.time))
            writer.longBytes(event.data)
            writer.raw(event.seal?.signature ?? [UInt8](repeating: 0, count: MeshEvent.signatureLength))
        case .eventAck(let id):
            header(TaskID(id), 0)
        case .inputRequired(let id, let epoch, let question):
            header(id, epoch)
            writer.longBytes(question)
        case .input(let id, let epoch, let reply, let timeRemaining):
            header(id, epoch)
            writer.u64(Self.milliseconds(timeRemaining))
            writer.longBytes(reply)
        case .artifactRequest(let id, let digest, let offset, let length):
            header(id, 0)
            writer.raw(digest)
            writer.u64(offset)
            writer.u32(length)
        case .artifactChunk(let id, let digest, let offset, let chainingValue, let bytes):
            header(id, 0)
            writer.raw(digest)
            writer.u64(offset)
            writer.u8(UInt8(chainingValue.count))
            writer.raw(chainingValue)
            // Last, so the audit digest can leave the bytes out.
            longBytes(bytes)
        case .artifactUnavailable(let id, let digest, let reason):
            header(id, 0)
            writer.raw(digest)
            writer.shortString(reason)
        }
        return writer
    }

    /// Roughly the bytes a message carries beyond its fixed fields.
    private var payloadLength: Int {
        switch self {
        case .offer(let offer): return offer.input.count + 512
        case .result(_, _, .success(let output)): return output.count
        case .artifactChunk(_, _, _, _, let bytes): return bytes.count
        case .progress(_, _, _, let events): return events.reduce(0) { $0 + $1.count + 4 }
        case .event(let event): return event.data.count + 256
        case .log(_, _, let chunk): return chunk.count
        default: return 0
        }
    }

    private static func milliseconds(_ duration: Duration) -> UInt64 {
        UInt64(max(0, duration.components.seconds)) * 1000
            + UInt64(max(0, duration.components.attoseconds) / 1_000_000_000_000_000)
    }

    private static func duration(_ milliseconds: UInt64) -> Duration {
        .milliseconds(Int64(min(milliseconds, UInt64(Int64.max / 1_000_000))))
    }

    /// A question or an answer, at most.
    public static let maximumExchange = 64 * 1024

    public struct DecodeError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Decodes the message in `bytes` from `offset` on (the wire's message kind before it is skipped, not copied).
    public init(decoding bytes: [UInt8], from offset: Int = 0) throws(DecodeError) {
        var reader = ByteReader(bytes, offset: offset)
        do {
            let tag = try reader.u8("tag")
            let id = TaskID(high: try reader.u64("task id"), low: try reader.u64("task id"))
            let epoch = try reader.u32("epoch")
            guard let kind = Kind(rawValue: tag) else { throw DecodeError(description: "unknown task message tag \(tag)") }
            switch kind {
            case .offer:
                let capability = try reader.shortString("capability")
                guard Capability.isValidName(capability) else { throw DecodeError(description: "invalid capability name") }
                let milliseconds = try reader.u64("time remaining")
                let input = try reader.longBytes("input", limit: Self.maximumInputLength)
                let context = try reader.shortString("context")
                guard context.isEmpty || TaskOptions.isValidContext(context) else { throw DecodeError(description: "invalid context") }
                let inputTimeout = try reader.u64("input timeout")
                let traceparent = try reader.shortString("traceparent")
                guard traceparent.isEmpty || TraceContext(traceparent) != nil else { throw DecodeError(description: "invalid traceparent") }
                self = .offer(TaskOffer(
                    id: id, epoch: epoch, capability: capability, input: input, timeRemaining: Self.duration(milliseconds),
                    options: TaskOptions(
                        context: context.isEmpty ? nil : context, inputTimeout: inputTimeout == 0 ? nil : Self.duration(inputTimeout),
                        traceparent: traceparent.isEmpty ? nil : traceparent)))
            case .accept:
                self = .accept(id, epoch: epoch)
            case .decline:
                guard let reason = DeclineReason(rawValue: try reader.u8("reason")) else {
                    throw DecodeError(description: "unknown decline reason")
                }
                self = .decline(id, epoch: epoch, reason: reason)
            case .result:
                switch try reader.u8("outcome") {
                case 1: self = .result(id, epoch: epoch, outcome: .success(try reader.longBytes("output", limit: Self.maximumInputLength)))
                case 2:
                    let message = try reader.longBytes("error", limit: 64 * 1024)
                    self = .result(id, epoch: epoch, outcome: .failure(String(decoding: message, as: UTF8.self)))
                case 3: self = .result(id, epoch: epoch, outcome: .canceled)
                case 4:
                    let message = try reader.longBytes("error", limit: 64 * 1024)
                    self = .result(id, epoch: epoch, outcome: .rejected(String(decoding: message, as: UTF8.self)))
                case 5:
                    let message = try reader.longBytes("error", limit: 64 * 1024)
                    self = .result(id, epoch: epoch, outcome: .timedOut(String(decoding: message, as: UTF8.self)))
                default: throw DecodeError(description: "unknown outcome")
                }
            case .resultAck:
                self = .resultAck(id, epoch: epoch)
            case .cancel:
                self = .cancel(id, epoch: epoch)
            case .held:
                self = .held(id, epoch: epoch)
            case .resume:
                self = .resume(id, epoch: epoch)
            case .log:
                self = .log(id, epoch: epoch, chunk: try reader.longBytes("log", limit: Self.maximumLogChunk))
            case .progress:
                let first = try reader.u32("first event")
                let count = Int(try reader.u16("event count"))
                guard (1...Self.maximumProgressBatch).contains(count) else {
                    throw DecodeError(description: "a progress message carries 1 to \(Self.maximumProgressBatch) events, not \(count)")
                }
                var events: [[UInt8]] = []
                for _ in 0..<count { events.append(try reader.longBytes("event", limit: Self.maximumProgressEvent)) }
                self = .progress(id, epoch: epoch, first: first, events: events)
            case .unsignedEvent:
                throw DecodeError(description: "an unsigned event (tag 11, from a build before events were signed)")
            case .event:
                let topic = try reader.shortString("topic")
                guard MeshEvent.isValidTopic(topic) else { throw DecodeError(description: "invalid topic") }
                let originKey = try Ed25519PublicKey(bytes: try reader.take(Ed25519PublicKey.byteCount, "origin key"))
                let time = Int64(bitPattern: try reader.u64("time"))
                let data = try reader.longBytes("data", limit: MeshEvent.maximumData)
                let signature = Array(try reader.take(MeshEvent.signatureLength, "signature"))
                self = .event(MeshEvent(
                    id: EventID(id), topic: topic, origin: NodeID(identityKey: originKey), time: time, data: data,
                    seal: MeshEvent.Seal(originKey: originKey, signature: signature)))
            case .eventAck:
                self = .eventAck(EventID(id))
            case .inputRequired:
                self = .inputRequired(id, epoch: epoch, question: try reader.longBytes("question", limit: Self.maximumExchange))
            case .input:
                let milliseconds = try reader.u64("time remaining")
                self = .input(id, epoch: epoch, reply: try reader.longBytes("reply", limit: Self.maximumExchange), timeRemaining: Self.duration(milliseconds))
            case .artifactRequest:
                let digest = Array(try reader.take(SHA256.byteCount, "artifact digest"))
                let offset = try reader.u64("offset")
                let length = try reader.u32("length")
                guard (1...UInt32(Self.maximumArtifactChunk)).contains(length) else {
                    throw DecodeError(description: "an artifact request asks for 1 to \(Self.maximumArtifactChunk) bytes, not \(length)")
                }
                self = .artifactRequest(id, digest: digest, offset: offset, length: length)
            case .artifactChunk:
                let digest = Array(try reader.take(SHA256.byteCount, "artifact digest"))
                let offset = try reader.u64("offset")
                let chainLength = Int(try reader.u8("chaining value length"))
                guard chainLength == 0 || chainLength == SHA256.byteCount else {
                    throw DecodeError(description: "a chaining value is 0 or 32 bytes, not \(chainLength)")
                }
                let chainingValue = Array(try reader.take(chainLength, "chaining value"))
                let count = Int(try reader.u32("artifact bytes"))
                guard count <= Self.maximumArtifactChunk else { throw DecodeError(description: "an artifact chunk of \(count) bytes") }
                let bytes = try reader.take(count, "artifact bytes")
                self = .artifactChunk(id, digest: digest, offset: offset, chainingValue: chainingValue, bytes: bytes)
            case .artifactUnavailable:
                let digest = Array(try reader.take(SHA256.byteCount, "artifact digest"))
                self = .artifactUnavailable(id, digest: digest, reason: try reader.shortString("reason"))
            }
            guard reader.isAtEnd else { throw DecodeError(description: "\(reader.remaining) trailing bytes") }
        } catch let error as DecodeError {
            throw error
        } catch {
            throw DecodeError(description: "malformed task message: \(error)")
        }
    }
}

/// An id in documents (stored workflow runs, events): its 32 hex digits.
extension MeshID: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let id = Self(hex: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "'\(text)' is not \(Kind.name) id"))
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.description)
    }
}
