import Foundation
import Logging
import MeshControl
import MeshCore
import MeshCrypto
import MeshExecutors
import MeshStorage
import NIOCore
import Synchronization

/// One artifact on its way here from a peer: its machine (what to ask for, what an arriving chunk means), the
/// partial file the shell writes to, and every task waiting for it.
struct ArtifactPull {
    /// Tells this pull from a later one of the same artifact, for file work that reports back after it ended.
    let id: UInt64
    let artifact: ArtifactRef
    let task: TaskID
    let peer: NodeID
    var machine: ArtifactPullMachine
    /// Opened on the artifact queue (it may hash a partial file); nil until then.
    var download: Unchecked<ArtifactStore.Download>?
    /// Every task waiting for the artifact, with the peer it would pull from itself.
    var waiters: [(task: TaskID, peer: NodeID, done: (ArtifactError?) -> Void)] = []
}

/// Faults a test asks a node to make in the transfers it serves (``NodeSettings/artifactFaults``); none in normal
/// use, and no way to set them from outside the process.
public struct ArtifactFaults: Sendable {
    /// Flip a byte of the Nth chunk this node serves (once): the receiver must notice and ask again.
    public var corruptChunk: Int?
    /// Cut the session to the receiver right after serving the Nth chunk (once): the transfer must resume.
    public var cutAfterChunk: Int?

    public init(corruptChunk: Int? = nil, cutAfterChunk: Int? = nil) {
        self.corruptChunk = corruptChunk
        self.cutAfterChunk = cutAfterChunk
    }
}

/// Artifacts: taken in over the control API or from an agent, pulled from the peer that has them when a task needs
/// them here (the executor pulls a task's inputs from the submitter, the submitter a result's from the executor),
/// and served to peers that a task entitles to them. File work runs on the artifact queue, never on the loop.
extension MeshNode {
    // MARK: - Submitting

    /// The references a submission lists, checked against what this node has: each must have been stored here
    /// (`POST /v1/artifacts`), and names must be usable as file names and distinct.
    func storedArtifacts(_ listed: [ControlAPI.ArtifactInfo]) -> Result<[ArtifactRef], ArtifactError> {
        guard listed.count <= ArtifactRef.maximumPerTask else {
            return .failure(ArtifactError("a task takes at most \(ArtifactRef.maximumPerTask) artifacts, not \(listed.count)"))
        }
        guard !listed.isEmpty else { return .success([]) }
        guard let store = self.artifactFiles.store else { return .failure(ArtifactError("this node has no artifact store")) }
        var artifacts: [ArtifactRef] = []
        for info in listed {
            guard let digest = Hex.decode(info.sha256.lowercased()), digest.count == SHA256.byteCount else {
                return .failure(ArtifactError("'\(info.sha256)' is not a SHA-256 (64 hex digits)"))
            }
            guard let size = store.size(of: digest) else {
                return .failure(ArtifactError("this node has no artifact \(info.sha256); store it first with POST /v1/artifacts"))
            }
            let stored = store.metadata(of: digest)
            let name = info.name ?? stored?.name ?? String(info.sha256.prefix(16))
            let mediaType = info.mediaType ?? stored?.mediaType ?? "application/octet-stream"
            guard ArtifactRef.isValidName(name) else {
                return .failure(ArtifactError("artifact name '\(name)' must be 1 to 128 bytes, without '/', '\\' or a leading '.'"))
            }
            guard ArtifactRef.isValidMediaType(mediaType) else { return .failure(ArtifactError("'\(mediaType)' is not a media type")) }
            artifacts.append(ArtifactRef(digest: digest, size: size, mediaType: mediaType, name: name))
        }
        guard Set(artifacts.map(\.name)).count == artifacts.count else {
            return .failure(ArtifactError("two artifacts of the task share a name; give each its own"))
        }
        return .success(artifacts)
    }

    // MARK: - Pulling

    /// Brings every artifact in `artifacts` here from `peer` (once each, however many ask), then calls `done` with
    /// nil, or with the first artifact's failure.
    func fetchArtifacts(_ artifacts: [ArtifactRef], of task: TaskID, from peer: NodeID, then done: @escaping (ArtifactError?) -> Void) {
        guard let store = self.artifactFiles.store else { return done(ArtifactError("this node has no artifact store")) }
        let missing = artifacts.filter { store.size(of: $0.digest) != $0.size }
        guard !missing.isEmpty else { return done(nil) }
        var remaining = missing.count
        var failure: ArtifactError?
        for artifact in missing {
            self.pull(artifact, of: task, from: peer) { error in
                if failure == nil { failure = error }
                remaining -= 1
                if remaining == 0 { done(failure) }
            }
        }
    }

    private func pull(_ artifact: ArtifactRef, of task: TaskID, from peer: NodeID, then done: @escaping (ArtifactError?) -> Void) {
        if self.transfers.pulls[artifact.hex] != nil {
            self.transfers.pulls[artifact.hex]?.waiters.append((task, peer, done))
            return
        }
        guard let store = self.artifactFiles.store else { return done(ArtifactError("this node has no artifact store")) }
        let fromPeer = self.transfers.pulls.values.filter { $0.peer == peer }.map(\.artifact.size)
        guard ArtifactPullMachine.mayStart(
            size: artifact.size, besides: fromPeer, storeCapacity: store.capacity, maximumArtifact: store.maximumArtifact,
            perPeer: Self.maximumPullsPerPeer)
        else {
            let share = ArtifactPullMachine.share(storeCapacity: store.capacity, maximumArtifact: store.maximumArtifact)
            return done(ArtifactError(
                "\(self.displayName(peer)) already has \(fromPeer.count) artifacts (\(fromPeer.reduce(0, +)) bytes) on their way here; "
                    + "one peer may hold at most \(Self.maximumPullsPerPeer) transfers and \(share) bytes (run --artifact-store-bytes)",
                isLimit: true))
        }
        self.transfers.nextPullID += 1
        let id = self.transfers.nextPullID
        self.transfers.pulls[artifact.hex] = ArtifactPull(
            id: id, artifact: artifact, task: task, peer: peer,
            machine: ArtifactPullMachine(size: artifact.size, now: self.now), waiters: [(task, peer, done)])
        self.transfers.leftovers.resumed(artifact.hex)
        self.artifactFiles.queue.async {
            let opened: Result<Unchecked<ArtifactStore.Download>, ArtifactError> = Result { () throws(ArtifactError) in
                Unchecked(try ArtifactStore.Download(store: store, artifact: artifact))
            }
            self.onLoop { node in
                guard node.transfers.pulls[artifact.hex]?.id == id else { return }
                switch opened {
                case .failure(let error): node.endPull(artifact.hex, error)
                case .success(let download):
                    let received = download.value.received
                    node.transfers.pulls[artifact.hex]?.download = download
                    if received > 0 {
                        node.context.logger.info("resuming an artifact transfer", metadata: [
                            "artifact": "\(artifact.hex.prefix(16))", "offset": "\(received)", "size": "\(artifact.size)"])
                    }
                    switch node.transfers.pulls[artifact.hex]?.machine.opened(received: received, now: node.now) {
                    case .writeEmptyChunk?: node.write([], chainingValue: [], offset: 0, of: artifact.hex)
                    case .ask?: node.askForChunks(artifact.hex)
                    case nil: break
                    }
                }
            }
        }
    }

    /// Asks for chunks until the window is full, within what the peer's `bytes` limit lets it send here.
    private func askForChunks(_ hex: String) {
        guard let pull = self.transfers.pulls[hex] else { return }
        let allowance = self.peers.accountability.bytesAllowance(for: pull.peer, now: self.now)
        for request in self.transfers.pulls[hex]?.machine.requests(allowance: allowance) ?? [] {
            self.deliver(
                .artifactRequest(pull.task, digest: pull.artifact.digest, offset: request.offset, length: UInt32(request.length)),
                to: pull.peer)
        }
    }

    func receiveArtifactChunk(
        _ task: TaskID, digest: [UInt8], offset: UInt64, chainingValue: [UInt8], bytes: ArraySlice<UInt8>, from peer: NodeID
    ) {
        let hex = Hex.encode(digest)
        guard self.transfers.pulls[hex]?.peer == peer,
            self.transfers.pulls[hex]?.machine.arrived(offset: offset, length: bytes.count) == true
        else { return }
        self.write(bytes, chainingValue: chainingValue, offset: offset, of: hex)
        self.askForChunks(hex)
    }

    /// Checks a chunk against the owner's chaining value and appends it to the partial file, on the artifact queue.
    private func write(_ bytes: ArraySlice<UInt8>, chainingValue: [UInt8], offset: UInt64, of hex: String) {
        guard let pull = self.transfers.pulls[hex], let download = pull.download else { return }
        let id = pull.id
        self.artifactFiles.queue.async {
            // A chunk after a damaged one was asked for before the damage was known: it is asked for again.
            guard download.value.received == offset else {
                return self.onLoop { node in
                    if node.transfers.pulls[hex]?.id == id { node.transfers.pulls[hex]?.machine.writeSkipped() }
                }
            }
            let verdict: Result<ArtifactStore.Download.Verdict, ArtifactError> = Result { () throws(ArtifactError) in
                try download.value.append(bytes, chainingValue: chainingValue)
            }
            self.onLoop { node in
                guard node.transfers.pulls[hex]?.id == id else { return }
                node.chunkWritten(hex, offset: offset, verdict: verdict)
            }
        }
    }

    private func chunkWritten(_ hex: String, offset: UInt64, verdict: Result<ArtifactStore.Download.Verdict, ArtifactError>) {
        let machineVerdict: ArtifactPullMachine.Verdict
        switch verdict {
        case .failure(let error):
            return self.endPull(hex, error)
        case .success(.complete): machineVerdict = .complete
        case .success(.accepted): machineVerdict = .accepted
        case .success(.damaged): machineVerdict = .damaged
        }
        guard let next = self.transfers.pulls[hex]?.machine.written(offset: offset, verdict: machineVerdict, now: self.now) else { return }
        self.follow(next, of: hex)
    }

    /// Acts on what the pull's machine decided.
    private func follow(_ next: ArtifactPullMachine.Next, of hex: String) {
        guard let pull = self.transfers.pulls[hex] else { return }
        switch next {
        case .ask:
            self.askForChunks(hex)
        case .askAgainAfterDamage(let offset):
            self.telemetry.metrics.increment("agentmesh_artifact_chunks_damaged_total")
            self.context.logger.warning("an artifact chunk did not match its owner's digest; asking for it again", metadata: [
                "artifact": "\(hex.prefix(16))", "offset": "\(offset)", "peer": "\(self.displayName(pull.peer))"])
            self.askForChunks(hex)
        case .askAgainAfterStall(let offset):
            self.context.logger.info("an artifact transfer stalled; asking again from the first missing chunk", metadata: [
                "artifact": "\(hex.prefix(16))", "offset": "\(offset)", "size": "\(pull.artifact.size)"])
            self.askForChunks(hex)
        case .complete:
            self.endPull(hex, nil)
        case .failed(.damaged(let times)):
            self.telemetry.metrics.increment("agentmesh_artifact_chunks_damaged_total")
            self.endPull(hex, ArtifactError(
                "\(self.displayName(pull.peer)) sent bytes of \(pull.artifact) that do not match its digest"
                    + (times > 1 ? ", \(times) times" : "")), discarding: true)
        case .failed(.silent(let time)):
            self.endPull(hex, ArtifactError(
                "no bytes of \(pull.artifact) came from \(self.displayName(pull.peer)) for \(Int(time.seconds)) s"))
        }
    }

    func receiveArtifactUnavailable(_ task: TaskID, digest: [UInt8], reason: String, from peer: NodeID) {
        let hex = Hex.encode(digest)
        guard let pull = self.transfers.pulls[hex], pull.peer == peer else { return }
        self.endPull(hex, ArtifactError("\(self.displayName(peer)) cannot send \(pull.artifact): \(reason)"))
    }

    /// `discarding`: the peer sent bytes that do not match the digest, so nothing it sent is worth resuming from.
    private func endPull(_ hex: String, _ error: ArtifactError?, discarding: Bool = false) {
        guard let pull = self.transfers.pulls.removeValue(forKey: hex) else { return }
        if let error {
            self.context.logger.notice("an artifact transfer failed", metadata: ["artifact": "\(hex.prefix(16))", "error": "\(error)"])
            // Otherwise the bytes so far stay for a later try to resume from, within the peer's share of leftovers.
            if let download = pull.download, discarding {
                self.artifactFiles.queue.async { download.value.discard() }
            } else if let download = pull.download, let store = self.artifactFiles.store {
                let dropped = self.transfers.leftovers.stopped(
                    hex, bytes: download.value.received, from: pull.peer,
                    share: ArtifactPullMachine.share(storeCapacity: store.capacity, maximumArtifact: store.maximumArtifact))
                if !dropped.isEmpty {
                    self.context.logger.notice("partial artifacts let go: the peer's unfinished transfers hold their share", metadata: [
                        "peer": "\(self.displayName(pull.peer))", "artifacts": "\(dropped.count)"])
                    self.artifactFiles.queue.async { for hex in dropped { store.discardPartial(hex) } }
                }
            }
        } else {
            let seconds = max((self.now - pull.machine.startedAt).seconds, 1e-6)
            self.context.logger.info("fetched an artifact", metadata: [
                "artifact": "\(hex.prefix(16))", "bytes": "\(pull.artifact.size)", "peer": "\(self.displayName(pull.peer))",
                "seconds": "\(String(format: "%.3f", seconds))", "mb_per_second": "\(Int(Double(pull.artifact.size) / seconds / 1e6))"])
            self.telemetry.metrics.increment("agentmesh_artifacts_fetched_total")
            self.telemetry.metrics.increment("agentmesh_artifact_bytes_fetched_total", by: Int(pull.artifact.size))
        }
        // A task that joined this pull from another peer's task tries its own peer before failing: the first peer's
        // failure (it left, its copy is damaged) says nothing about the second's. The bytes so far are kept.
        guard let error, !error.isLimit else {
            for waiter in pull.waiters { waiter.done(error) }
            return
        }
        for waiter in pull.waiters {
            if waiter.peer == pull.peer {
                waiter.done(error)
            } else {
                self.pull(pull.artifact, of: waiter.task, from: waiter.peer, then: waiter.done)
            }
        }
    }

    /// Re-asks stalled pulls (a session dropped with requests in it) and gives up on dead ones.
    func artifactTick(now: Duration) {
        for hex in Array(self.transfers.pulls.keys) {
            guard let next = self.transfers.pulls[hex]?.machine.tick(now: now) else { continue }
            self.follow(next, of: hex)
        }
    }

    // MARK: - Serving

    /// A peer asks for bytes of an artifact: served only when a task between the two entitles it (the input of a
    /// task offered to it, the result of a task it submitted here).
    func serveArtifact(_ task: TaskID, digest: [UInt8], offset: UInt64, length: UInt32, to peer: NodeID) {
        guard let store = self.artifactFiles.store, self.mayServe(digest, of: task, to: peer) else {
            return self.deliver(.artifactUnavailable(task, digest: digest, reason: "not an artifact of that task here"), to: peer)
        }
        self.transfers.chunksServed += 1
        let corrupt = self.settings.artifactFaults.corruptChunk == self.transfers.chunksServed
        let cut = self.settings.artifactFaults.cutAfterChunk == self.transfers.chunksServed
        if let cutAfter = self.settings.artifactFaults.cutAfterChunk, self.transfers.chunksServed > cutAfter {
            self.transfers.offsetsServedAfterCut.append(offset)
        }
        self.artifactFiles.queue.async {
            let read: Result<(bytes: [UInt8], chainingValue: [UInt8]), ArtifactError> = Result { () throws(ArtifactError) in
                try store.read(digest, offset: offset, length: Int(length))
            }
            self.onLoop { node in
                switch read {
                case .failure(let error):
                    node.deliver(.artifactUnavailable(task, digest: digest, reason: String(error.description.prefix(200))), to: peer)
                case .success(var chunk):
                    if corrupt, !chunk.bytes.isEmpty { chunk.bytes[chunk.bytes.count / 2] ^= 0xFF }
                    node.deliver(.artifactChunk(task, digest: digest, offset: offset, chainingValue: chunk.chainingValue, bytes: chunk.bytes[...]), to: peer)
                    if cut { node.peers.connections[peer]?.channel.close(promise: nil) }
                }
            }
        }
    }

    /// With the session-cut fault set, the offsets served after the cut (its test tells a resumed transfer from one
    /// that started over).
    var offsetsServedAfterCut: [UInt64] { self.transfers.offsetsServedAfterCut }

    private func mayServe(_ digest: [UInt8], of task: TaskID, to peer: NodeID) -> Bool {
        if let submitted = self.submitter.task(task), submitted.attempts.contains(where: { $0.peer == peer }),
            TaskPayload.artifacts(of: submitted.input).contains(where: { $0.digest == digest })
        {
            return true
        }
        if let accepted = self.runner.task(task), accepted.submitter == peer, case .success(let output)? = accepted.outcome,
            TaskPayload.artifacts(of: output).contains(where: { $0.digest == digest })
        {
            return true
        }
        return false
    }

    // MARK: - Results

    /// A result whose artifacts are not here yet is held while they are pulled from the executor, then handed to
    /// the submitter (not acknowledged before, so a crash on either side re-sends it). False: hand it on now.
    func holdResultForArtifacts(_ message: TaskMessage, from peer: NodeID) -> Bool {
        guard case .result(let id, let epoch, .success(let output)) = message, TaskPayload.hasArtifacts(output),
            let task = self.submitter.task(id), !task.state.isTerminal,
            task.attempts.last.map({ $0.epoch == epoch && $0.peer == peer }) == true
        else { return false }
        let artifacts: [ArtifactRef]
        do {
            artifacts = try TaskPayload(decoding: output).artifacts
        } catch {
            self.runSubmitter { $0.receive(.result(id, epoch: epoch, outcome: .failure("the result's artifact list is malformed: \(error)")), from: peer, now: self.now) }
            return true
        }
        guard let store = self.artifactFiles.store, artifacts.contains(where: { store.size(of: $0.digest) != $0.size }) else { return false }
        guard !self.transfers.heldResults.contains(id) else { return true }
        self.transfers.heldResults.insert(id)
        self.fetchArtifacts(artifacts, of: id, from: peer) { error in
            self.transfers.heldResults.remove(id)
            let outcome: TaskMessage
            if let error {
                // Too large for this node: no other executor's result would fit either.
                let sentence = "the result's artifacts could not be fetched: \(error)"
                outcome = .result(id, epoch: epoch, outcome: error.isLimit ? .rejected(sentence) : .failure(sentence))
            } else {
                outcome = message
            }
            self.runSubmitter { $0.receive(outcome, from: peer, now: self.now) }
        }
        return true
    }

    // MARK: - Runs

    /// Readies a run's artifacts: pulls the inputs from the submitter, links them into the run's input folder and
    /// makes an empty output folder. nil for builtin agents, which take no files.
    func prepareArtifacts(
        for task: TaskRunner.AcceptedTask, executor: CapabilitySpec.Executor,
        then done: @escaping (Result<(json: [UInt8], folders: ArtifactFolders?), ArtifactError>) -> Void
    ) {
        let payload: TaskPayload
        do {
            payload = try TaskPayload(decoding: task.input)
        } catch {
            return done(.failure(ArtifactError("the task's artifact list is malformed: \(error)")))
        }
        switch executor {
        case .builtinEcho, .builtinStream: return done(.success((payload.json, nil)))
        case .exec, .http: break
        }
        guard let store = self.artifactFiles.store else { return done(.success((payload.json, nil))) }
        let done = Unchecked(done)
        self.fetchArtifacts(payload.artifacts, of: task.id, from: task.submitter) { error in
            if let error { return done.value(.failure(error)) }
            self.artifactFiles.queue.async {
                let run = store.directory + "/runs/\(task.id)-\(task.epoch)"
                let folders = ArtifactFolders(
                    input: run + "/in", output: run + "/out", scratch: run,
                    inputs: payload.artifacts.map { .init(name: $0.name, mediaType: $0.mediaType, path: run + "/in/" + $0.name) },
                    maximumAnswer: store.maximumArtifact)
                Self.removeTree(run)
                var failure: ArtifactError?
                for folder in [store.directory + "/runs", run, folders.input, folders.output] where mkdir(folder, 0o700) != 0 && errno != EEXIST {
                    failure = ArtifactError("cannot create \(folder): \(String(cString: strerror(errno)))")
                }
                for artifact in payload.artifacts where failure == nil {
                    do throws(ArtifactError) { try store.verify(artifact.digest) } catch {
                        failure = ArtifactError("cannot give \(artifact.name) to the agent: \(error)")
                        break
                    }
                    // A copy, not a link: an agent that wrote to a hard link changed the stored, content-addressed
                    // bytes, still served under their old digest. The kernel copies (or clones) it without
                    // passing it through this process.
                    if let error = ArtifactStore.copyFile(store.path(of: artifact.digest), to: folders.input + "/" + artifact.name) {
                        failure = ArtifactError("cannot give \(artifact.name) to the agent: \(error)")
                    }
                }
                let result: Result<(json: [UInt8], folders: ArtifactFolders?), ArtifactError> =
                    failure.map { .failure($0) } ?? .success((payload.json, folders))
                self.onLoop { _ in done.value(result) }
            }
        }
    }

    /// After a run: a successful one's output files become the result's artifacts. The run's folder goes either way.
    nonisolated func collectArtifacts(_ folders: ArtifactFolders?, outcome: TaskOutcome) async -> TaskOutcome {
        guard let folders else { return outcome }
        let store = self.artifactFiles.store
        return await withCheckedContinuation { continuation in
            self.artifactFiles.queue.async {
                defer { Self.removeTree(folders.scratch) }
                guard case .success(let json) = outcome, let store else { return continuation.resume(returning: outcome) }
                let names = ((try? FileManager.default.contentsOfDirectory(atPath: folders.output)) ?? []).sorted()
                guard names.count <= ArtifactRef.maximumPerTask else {
                    return continuation.resume(returning: .failure(
                        "the agent left \(names.count) files in AGENTMESH_ARTIFACTS_OUT; a result carries at most \(ArtifactRef.maximumPerTask)"))
                }
                var artifacts: [ArtifactRef] = []
                for name in names where ArtifactRef.isValidName(name) {
                    do {
                        artifacts.append(try store.ingest(file: folders.output + "/" + name, name: name, mediaType: ArtifactRef.mediaType(ofFileNamed: name)))
                    } catch {
                        return continuation.resume(returning: .failure("the result's artifact \(name) could not be kept: \(error)"))
                    }
                }
                continuation.resume(returning: .success(TaskPayload(json: json, artifacts: artifacts).encoded()))
            }
        }
    }

    nonisolated static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    // MARK: - Retention

    /// Every ten minutes: artifacts no task in memory refers to, stored (or last used) longer ago than the task
    /// retention, are removed, as are partial downloads nobody continued for as long.
    /// Transfers from one peer at once.
    static let maximumPullsPerPeer = 16

    /// A pull that stopped keeps its bytes this long for a retry to resume from (one executor's failed pulls
    /// could hold the store's room for the day the finished artifacts are kept).
    static let partialLife: Duration = .seconds(3600)

    func sweepArtifacts() {
        guard let store = self.artifactFiles.store else { return }
        var keep = Set(self.transfers.pulls.keys)
        for task in self.submitter.allTasks {
            for artifact in TaskPayload.artifacts(of: task.input) { keep.insert(artifact.hex) }
            if case .success(let output)? = task.outcome { for artifact in TaskPayload.artifacts(of: output) { keep.insert(artifact.hex) } }
        }
        for task in self.runner.allTasks {
            for artifact in TaskPayload.artifacts(of: task.input) { keep.insert(artifact.hex) }
            if case .success(let output)? = task.outcome { for artifact in TaskPayload.artifacts(of: output) { keep.insert(artifact.hex) } }
        }
        let cutoff = Date().addingTimeInterval(-self.submitter.settings.finishedRetention.seconds)
        let partialsCutoff = Date().addingTimeInterval(-Self.partialLife.seconds)
        let keeping = keep
        self.artifactFiles.queue.async {
            let freed = store.sweep(keeping: keeping, storedBefore: cutoff, partialsBefore: partialsCutoff)
            if freed > 0 { self.context.logger.info("removed artifacts past retention", metadata: ["bytes": "\(freed)"]) }
        }
    }

    /// Marks artifacts as just used, so retention counts from their last task, not their arrival.
    func touchArtifacts(_ artifacts: [ArtifactRef]) {
        guard let store = self.artifactFiles.store, !artifacts.isEmpty else { return }
        self.artifactFiles.queue.async { for artifact in artifacts { store.touch(artifact.digest) } }
    }
}

// MARK: - The control API's artifacts

extension MeshNode {
    /// `POST /v1/artifacts?name=N` with `Content-Type` and `Content-Length`: refused on the length alone when the
    /// artifact is too large or the store is full, otherwise written to disk as it arrives.
    nonisolated var artifactUploader: ControlServer.Uploader {
        { [weak self] request, length in
            guard let self, let store = self.artifactFiles.store else { return .refused(.error(503, "this node has no artifact store")) }
            let name = request.query["name"] ?? "artifact"
            guard ArtifactRef.isValidName(name) else {
                return .refused(.error(400, "name must be 1 to 128 bytes, without '/', '\\' or a leading '.'"))
            }
            let mediaType = request.headers["content-type"].flatMap { $0.isEmpty ? nil : $0 } ?? "application/octet-stream"
            guard ArtifactRef.isValidMediaType(mediaType) else { return .refused(.error(400, "'\(mediaType)' is not a media type")) }
            do {
                let writer = try ArtifactStore.Writer(store: store, size: length)
                return .accepted(ArtifactUpload(writer: writer, queue: self.artifactFiles.queue, name: name, mediaType: mediaType))
            } catch {
                return .refused(.error(413, "\(error)"))
            }
        }
    }

    /// `GET /v1/artifacts/SHA256`: the bytes, with the media type they were stored with, once they are verified
    /// against their digest (on the artifact queue: hashing a large file would hold the event loop).
    func answerArtifact(_ digest: [UInt8], respond: @escaping Respond) {
        guard let store = self.artifactFiles.store, store.size(of: digest) != nil else {
            return respond(.error(404, "no artifact \(Hex.encode(digest)) on this node"))
        }
        self.artifactFiles.queue.async {
            let response: ControlResponse
            do throws(ArtifactError) {
                try store.verify(digest)
                guard let size = store.size(of: digest) else { throw ArtifactError("no such artifact") }
                response = .file(store.path(of: digest), size: size, contentType: store.metadata(of: digest)?.mediaType ?? "application/octet-stream")
            } catch {
                // Gone (removed meanwhile, or removed because its bytes no longer matched): 404 with the reason.
                response = store.size(of: digest) == nil
                    ? .error(404, error.description == "no such artifact" ? "no artifact \(Hex.encode(digest)) on this node" : error.description)
                    : .error(500, error.description)
            }
            self.onLoop { _ in respond(response) }
        }
    }
}

/// One artifact streaming in over the control API. The connection's bytes are written on the artifact queue; while
/// more than 8 MiB wait for the disk the connection stops reading, so a fast client cannot fill the node's memory.
final class ArtifactUpload: @unchecked Sendable {  // `pending` is locked; the writer is used only on the queue
    private let writer: ArtifactStore.Writer
    private let queue: DispatchQueue
    private let name: String
    private let mediaType: String
    private let pending = Mutex((bytes: 0, paused: false))
    private var failure: ArtifactError?
    private var ended = false

    init(writer: ArtifactStore.Writer, queue: DispatchQueue, name: String, mediaType: String) {
        self.writer = writer
        self.queue = queue
        self.name = name
        self.mediaType = mediaType
    }

    func write(_ buffer: ByteBuffer, channel: any Channel) {
        let bytes = Array(buffer.readableBytesView)
        let pause = self.pending.withLock { pending -> Bool in
            pending.bytes += bytes.count
            guard pending.bytes > 8 << 20, !pending.paused else { return false }
            pending.paused = true
            return true
        }
        if pause { channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in } }
        self.queue.async {
            if self.failure == nil {
                do throws(ArtifactError) { try self.writer.write(bytes) } catch { self.failure = error }
            }
            let resume = self.pending.withLock { pending -> Bool in
                pending.bytes -= bytes.count
                guard pending.paused, pending.bytes < 2 << 20 else { return false }
                pending.paused = false
                return true
            }
            if resume { channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in } }
        }
    }

    func finish(_ respond: @escaping @Sendable (ControlResponse) -> Void) {
        self.queue.async {
            guard !self.ended else { return }
            self.ended = true
            if let failure = self.failure {
                self.writer.abort()
                return respond(.error(507, "the artifact could not be stored: \(failure)"))
            }
            do {
                let artifact = try self.writer.finish(name: self.name, mediaType: self.mediaType)
                respond(.json(
                    ControlAPI.ArtifactInfo(sha256: artifact.hex, size: artifact.size, mediaType: artifact.mediaType, name: artifact.name),
                    status: 201))
            } catch {
                respond(.error(400, "\(error)"))
            }
        }
    }

    func abort() {
        self.queue.async {
            guard !self.ended else { return }
            self.ended = true
            self.writer.abort()
        }
    }
}
