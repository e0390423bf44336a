/// One artifact on its way to this node from a peer, as a pure machine: which chunks to ask for next, which arriving
/// chunk to write, what a written chunk's verdict means, when a silent transfer asks again and when it gives up. The
/// shell opens the partial file, moves the bytes and checks them against the digest; this decides, under the clock
/// it is given.
///
/// Chunks are asked for in order, a window at a time. A dropped session or a silent peer costs a re-ask from the
/// first missing chunk, never a restart; damaged chunks in a row mean the owner's bytes are wrong.
public struct ArtifactPullMachine: Sendable {
    public struct Settings: Sendable {
        /// Chunks in flight or waiting for the disk: enough to keep loopback and a LAN busy, little enough to bound
        /// memory (8 MiB with 1 MiB chunks).
        public var window = 8
        public var chunkLength = TaskMessage.maximumArtifactChunk
        /// Nothing arriving for this long asks again from the first missing chunk (a session dropped with requests
        /// in it).
        public var stall: Duration = .seconds(2)
        /// No progress for this long gives up.
        public var giveUp: Duration = .seconds(120)
        /// Damaged chunks in a row that mean the owner's copy is wrong, not the way here.
        public var damagedLimit = 3

        public init() {}
    }

    public struct ChunkRequest: Equatable, Sendable {
        public let offset: UInt64
        public let length: Int

        public init(offset: UInt64, length: Int) {
            self.offset = offset
            self.length = length
        }
    }

    /// What the disk said of a chunk (the shell's download checks it against the owner's chaining value).
    public enum Verdict: Equatable, Sendable {
        case accepted
        case damaged
        case complete
    }

    public enum Failure: Equatable, Sendable {
        /// The owner sent bytes that do not match the digest this many times in a row (once for an empty artifact,
        /// which has nothing to ask for again): nothing it sent is worth resuming from.
        case damaged(times: Int)
        /// No bytes came for this long.
        case silent(Duration)
    }

    /// What to do after opening the partial file.
    public enum AfterOpen: Equatable, Sendable {
        /// Ask for chunks (``requests(allowance:)``).
        case ask
        /// The artifact is empty: write the one empty chunk, which completes it or proves the digest wrong.
        case writeEmptyChunk
    }

    /// What to do after a chunk was written or a clock tick.
    public enum Next: Equatable, Sendable {
        /// Ask for chunks: the window has room, or the peer's byte allowance may have grown back.
        case ask
        /// A chunk was damaged: everything from it is asked for again.
        case askAgainAfterDamage(offset: UInt64)
        /// Nothing arrived for the stall time: everything from the first missing chunk is asked for again.
        case askAgainAfterStall(offset: UInt64)
        case complete
        case failed(Failure)
    }

    public let size: UInt64
    public let startedAt: Duration
    public let settings: Settings
    /// False until the shell has opened the partial file.
    public private(set) var isOpen = false
    /// The next offset to ask for, and the next one expected to arrive.
    public private(set) var nextRequest: UInt64 = 0
    public private(set) var expected: UInt64 = 0
    /// Offsets asked for and not yet answered, and chunks received but not yet written: together at most a window,
    /// so a disk slower than the network holds the transfer back instead of filling memory.
    public private(set) var outstanding: Set<UInt64> = []
    public private(set) var unwritten = 0
    /// When a chunk was last written (or the transfer began): what the give-up time counts from.
    public private(set) var lastProgress: Duration
    /// What the stall time counts from: the last progress, or a re-ask after a stall, whichever is later.
    private var stallClock: Duration
    private var damagedInARow = 0

    public init(size: UInt64, now: Duration, settings: Settings = Settings()) {
        self.size = size
        self.startedAt = now
        self.lastProgress = now
        self.stallClock = now
        self.settings = settings
    }

    /// The partial file is open with `received` bytes from an earlier try: the transfer resumes there.
    public mutating func opened(received: UInt64, now: Duration) -> AfterOpen {
        self.isOpen = true
        self.nextRequest = min(received, self.size)
        self.expected = self.nextRequest
        self.lastProgress = now
        self.stallClock = now
        guard self.size > 0 else {
            self.unwritten += 1
            return .writeEmptyChunk
        }
        return .ask
    }

    /// The chunks to ask for now, until the window is full, within `allowance` bytes (what the peer's limit lets it
    /// send here).
    public mutating func requests(allowance: Double) -> [ChunkRequest] {
        guard self.isOpen else { return [] }
        var allowance = allowance - Double(self.outstanding.count * self.settings.chunkLength)
        var requests: [ChunkRequest] = []
        while self.outstanding.count + self.unwritten < self.settings.window, self.nextRequest < self.size {
            let length = Int(min(UInt64(self.settings.chunkLength), self.size - self.nextRequest))
            guard allowance >= Double(length) else { break }
            allowance -= Double(length)
            self.outstanding.insert(self.nextRequest)
            requests.append(ChunkRequest(offset: self.nextRequest, length: length))
            self.nextRequest += UInt64(length)
        }
        return requests
    }

    /// A chunk arrived. True: write it. False: drop it, as an answer to a request made before a reset (a damaged
    /// chunk, a stall) that was asked for again, or bytes nobody asked for.
    public mutating func arrived(offset: UInt64, length: Int) -> Bool {
        guard self.isOpen, offset == self.expected, length > 0 || self.size == 0,
            UInt64(length) <= self.size - offset, self.outstanding.remove(offset) != nil
        else { return false }
        self.expected += UInt64(length)
        self.unwritten += 1
        return true
    }

    /// The disk did not write a chunk handed to it: it followed a damaged one and is asked for again.
    public mutating func writeSkipped() {
        self.unwritten -= 1
    }

    /// The disk wrote, or refused, the chunk at `offset`.
    public mutating func written(offset: UInt64, verdict: Verdict, now: Duration) -> Next {
        self.unwritten -= 1
        switch verdict {
        case .complete:
            return .complete
        case .accepted:
            self.damagedInARow = 0
            self.lastProgress = now
            self.stallClock = now
            return .ask
        case .damaged:
            self.damagedInARow += 1
            guard self.damagedInARow < self.settings.damagedLimit, self.size > 0 else {
                return .failed(.damaged(times: self.damagedInARow))
            }
            self.outstanding.removeAll()
            self.nextRequest = offset
            self.expected = offset
            self.stallClock = now
            return .askAgainAfterDamage(offset: offset)
        }
    }

    /// The clock: a silent transfer asks again from its first missing chunk, a dead one gives up.
    public mutating func tick(now: Duration) -> Next {
        guard self.isOpen else { return .ask }
        if now - self.lastProgress > self.settings.giveUp {
            return .failed(.silent(self.settings.giveUp))
        }
        if now - self.stallClock > self.settings.stall, self.nextRequest > self.expected {
            self.outstanding.removeAll()
            self.nextRequest = self.expected
            // A re-ask that also goes unanswered is repeated half a stall later; the give-up time still counts from
            // the last chunk written, so a peer that never answers is given up on.
            self.stallClock = now - self.settings.stall / 2
            return .askAgainAfterStall(offset: self.expected)
        }
        return .ask
    }

    /// Whether one more transfer from a peer may start: one peer's artifacts on their way here are at most
    /// `perPeer` transfers and a quarter of the store (or one artifact of the largest size, if more), so one peer's
    /// transfers cannot fill the store. `others` are the sizes of that peer's transfers already under way. An
    /// artifact too large for the node at all passes here and is refused as such when its file opens.
    public static func mayStart(
        size: UInt64, besides others: [UInt64], storeCapacity: UInt64, maximumArtifact: UInt64, perPeer: Int = 16
    ) -> Bool {
        let claimed = others.reduce(size, +)
        let share = Self.share(storeCapacity: storeCapacity, maximumArtifact: maximumArtifact)
        return size > maximumArtifact || (others.count < perPeer && claimed <= share)
    }

    /// The bytes of the store one peer's transfers (and its unfinished partial files) may hold.
    public static func share(storeCapacity: UInt64, maximumArtifact: UInt64) -> UInt64 {
        max(storeCapacity / 4, maximumArtifact)
    }
}
