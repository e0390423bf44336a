import Foundation
import MeshCore
import MeshCrypto
import MeshTestKit
import MeshWire
import NIOCore
import Testing

@testable import MeshTransport
@testable import MeshStorage
import MeshControl

#if canImport(Glibc)
import Glibc
#endif

/// Root may mount a small tmpfs: a real file system that fills up.
let canMountTmpfs: Bool = {
    guard getuid() == 0 else { return false }
    let probe = "/tmp/amt-mount-probe-\(getpid())"
    try? FileManager.default.createDirectory(atPath: probe, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: probe) }
    guard mount("tmpfs", probe, "tmpfs", 0, "size=64k") == 0 else { return false }
    umount(probe)
    return true
}()

/// Per-peer limits and audit logs between real nodes on loopback.
@Suite(.serialized) struct AccountabilityIntegrationTests {
    /// A holder of the network key whom nobody trusts comes back with a fresh identity every time: each refusal
    /// costs no file and no descriptor of its own (they share the node's refusal log, at a bounded rate), and a
    /// trusted node still joins meanwhile.
    @Test func strangersWithFreshIdentitiesShareOneRefusalLog() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let honest = try mesh.node("honest")
        let stranger = try mesh.node("stranger")
        try a.trust(honest)
        try honest.trust(a)
        let runningA = try await a.start()
        let attempts = 300
        try await withThrowingTaskGroup(of: Void.self) { group in
            for batch in 0..<10 {
                group.addTask {
                    for number in 0..<(attempts / 10) {
                        let fresh = TestNode(
                            home: stranger.home, identity: NodeIdentity(name: "s\(batch)-\(number)"),
                            networkKey: stranger.networkKey)
                        let session = try await fresh.openSession(to: runningA.address)
                        try? await session.executeThenClose { inbound, _ in for try await _ in inbound {} }
                    }
                }
            }
            let runningHonest = try await honest.start { $0.joins = [runningA.address] }
            #expect(await eventually(timeout: .seconds(30)) { await runningHonest.members("alive") == ["a"] }, "the trusted node joined during the attack")
            try await group.waitForAll()
            await runningHonest.stop()
        }
        let audit = try #require(await runningA.node.auditLog)
        #expect(audit.openDescriptorCount <= 2)
        try await Task.sleep(for: .milliseconds(1_200))  // the count of refusals left out is recorded a second later
        await runningA.stop()
        let logs = AuditFolder.read(a.home.auditDirectory, keepRecords: true)
        #expect(logs.count == 2, "the refusal log and the honest peer's: \(logs.map(\.file))")
        let refusals = try #require(logs.first { $0.report?.header.peerName == "refused handshakes" }?.report)
        let refused = refusals.records.filter { $0.entry.event == .handshakeRefused }
        #expect(refused.count >= PeerAccountability.refusalRecordsPerSecond)
        #expect(refused.count < attempts, "recorded at a bounded rate, the rest counted")
        #expect(refused.contains { $0.entry.detail.contains("more refused handshakes not recorded one by one") })
        #expect(refused.filter { $0.entry.detail.contains("refused here") }.count >= PeerAccountability.refusalRecordsPerSecond)
    }

    /// One trusted peer floods task offers at 10× its limit: its offers are declined `rate_limited`, then it is
    /// cut off and banned; an honest peer's tasks keep completing; every step is in the flooder's audit log, and
    /// the honest peer's log holds its signed transcripts.
    @Test func aPeerFloodingOffersIsDeclinedThenBannedWhileOthersKeepWorking() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let honest = try mesh.node("honest")
        let flooder = try mesh.node("flooder")
        try a.trust(honest, flooder)
        try honest.trust(a)
        let runningA = try await a.start {
            $0.capabilities = [CapabilitySpec(name: "echo", executor: .builtinEcho)]
            $0.limits.rates[.offers] = Rate(perSecond: 20, burst: 20)
        }
        let runningHonest = try await honest.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningHonest.members("alive").contains("a") })

        // The honest peer submits 10 tasks a second throughout the flood.
        let honestTasks = Task {
            var ids: [String] = []
            for number in 0..<30 {
                ids.append(try await TaskIntegrationTests.submit(runningHonest, "echo", ["n": number], attempts: 10))
                try await Task.sleep(for: .milliseconds(100))
            }
            return ids
        }

        // The flooder: 200 offers a second (10× the limit of 20/s) until a closes the session.
        let session = try await flooder.openSession(to: runningA.address)
        var declinedRateLimited = 0
        var closeReason: SecureSession.CloseReason?
        var sent = 0
        try await session.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else {
                Issue.record("the flooder's session was not established")
                return
            }
            let reader = Task {
                var declined = 0
                var reason: SecureSession.CloseReason?
                // The node closes with the flood's bytes unread, which the kernel may turn into a reset.
                while let event = try? await events.next() {
                    switch event {
                    case .message(.task(.decline(_, _, .rateLimited)), _, _): declined += 1
                    case .closed(let why): reason = why
                    default: break
                    }
                }
                return (declined, reason)
            }
            let start = ContinuousClock.now
            while sent < 1000, ContinuousClock.now - start < .seconds(5) {
                var random = SystemRandomNumberGenerator()
                let offer = TaskOffer(
                    id: TaskID(using: &random), epoch: 1, capability: "echo", input: Array("{}".utf8),
                    timeRemaining: .seconds(30))
                do { try await outbound.write(.task(.offer(offer))) } catch { break }
                sent += 1
                try await Task.sleep(until: start + .milliseconds(5 * sent))
            }
            (declinedRateLimited, closeReason) = await reader.value
        }
        #expect(declinedRateLimited > 0, "offers over the limit are declined rate_limited")
        // The close frame says why: the node sends it, then its FIN, and reads on until the flooder closes, so the
        // flood's unread bytes cannot turn the close into a reset that destroys the frame.
        #expect(closeReason?.code == SecureSession.CloseReason.bannedCode, "\(String(describing: closeReason))")
        #expect(sent < 1000, "the session ended before the flood did")

        // Banned: a new session is refused with the same reason.
        let retry = try await flooder.openSession(to: runningA.address)
        let refusal = try await retry.executeThenClose { inbound, _ in
            var reason: SecureSession.CloseReason?
            for try await event in inbound { if case .closed(let why) = event { reason = why } }
            return reason
        }
        #expect(refusal?.code == SecureSession.CloseReason.bannedCode)

        let limits = await runningA.node.limitsReport()
        let flooderLimits = try #require(limits.peers.first { $0.name == "flooder" })
        #expect(flooderLimits.bannedUntil != nil)
        #expect(flooderLimits.bans == 1)
        // The metrics README documents for this: the limit's refusals and the ban.
        let metrics = String(decoding: runningA.node.telemetry.metrics.exposition(), as: UTF8.self)
        for series in [#"agentmesh_limit_refusals_total{class="offers"}"#, "agentmesh_bans_total 1"] {
            #expect(metrics.contains(series), "\(series) in \(metrics.split(separator: "\n").filter { $0.hasPrefix("agentmesh_") })")
        }

        // The honest peer's tasks all complete.
        for id in try await honestTasks.value {
            let task = try await TaskIntegrationTests.wait(runningHonest, id, seconds: 30)
            #expect(task.state == "completed", "\(id): \(task.error ?? task.state)")
        }
        await runningHonest.stop()
        await runningA.stop()

        // Every step is in the flooder's audit log, and both logs verify.
        let logs = AuditFolder.read(a.home.auditDirectory, keepRecords: true)
        for log in logs {
            #expect(log.report?.problem == nil, "\(log.file): \(log.report?.problem?.description ?? log.error ?? "")")
        }
        let flooderLog = try #require(logs.first { $0.report?.header.peerName == "flooder" }?.report)
        let events = flooderLog.records.map(\.entry.event)
        let received = events.filter { $0 == .received }.count
        // Every offer a read is recorded before anything else happens to it: at least each one it answered
        // (accepted or declined), plus those that arrived after the ban, which are recorded and dropped.
        let answeredCount = flooderLog.records.filter { $0.entry.event == .sent && [2, 3].contains($0.entry.message) }.count
        #expect(received >= answeredCount && received <= sent, "\(received) recorded, \(answeredCount) answered, \(sent) sent")
        #expect(events.contains(.rateLimited))
        #expect(events.contains(.banned))
        #expect(events.contains(.handshakeRefused), "the refused retry is recorded")
        #expect(events.contains(.connected) && events.contains(.disconnected))
        let declinesSent = flooderLog.records.filter { $0.entry.event == .sent && $0.entry.message == 3 }.count
        #expect(declinesSent >= declinedRateLimited)
        let answered = Set(flooderLog.records.filter { $0.entry.event == .sent }.compactMap(\.entry.task))
        let offered = Set(flooderLog.records.filter { $0.entry.event == .received }.compactMap(\.entry.task))
        #expect(answered.isSubset(of: offered), "every offer a answered is recorded as received")
        let honestLog = try #require(logs.first { $0.report?.header.peerName == "honest" }?.report)
        #expect(honestLog.peerCheckpoints >= 1, "the honest peer signed what it sent")
        #expect(honestLog.checkpoints >= 1, "the node signed its log at shutdown")
        #expect(!a.logs.matching("peer banned", ["peer": "flooder \(flooder.id.short)"]).isEmpty)
    }

    /// A 3 MiB input and its echoed result each go out in parts and are digested as they arrive (by their sending
    /// session part by part, by their receiving session frame by frame): the digests each side records agree, so
    /// each peer's signed transcript matches what the other received and no one is held to have misbehaved.
    @Test func largeMessagesDigestedInPartsKeepBothLogsInAgreement() async throws {
        let mesh = try TestMesh()
        let (a, b) = try mesh.trustedPair()
        let runningA = try await a.start { $0.maximumTaskInput = 4 << 20 }
        let runningB = try await b.start {
            $0.joins = [runningA.address]
            $0.maximumTaskInput = 4 << 20
            $0.capabilities = [CapabilitySpec(name: "echo", executor: .builtinEcho)]
        }
        #expect(await eventually { await runningA.members("alive").contains("b") })
        let input = String(repeating: "0123456789abcdef", count: 3 << 16)  // 3 MiB
        let id = try await TaskIntegrationTests.submit(runningA, "echo", input)
        let task = try await TaskIntegrationTests.wait(runningA, id)
        #expect(task.state == "completed")
        #expect(task.result == ControlAPI.JSONValue(input))
        // Each side signs its transcript of what it sent a second after the first message it covers.
        try await Task.sleep(for: .seconds(2))
        await runningB.stop()
        await runningA.stop()
        for (node, peer) in [(a, "b"), (b, "a")] {
            let logs = AuditFolder.read(node.home.auditDirectory, keepRecords: true)
            let log = try #require(logs.first { $0.report?.header.peerName == peer }?.report)
            #expect(log.problem == nil)
            #expect(log.peerCheckpoints >= 1, "\(peer) signed a transcript that matched")
            #expect(!log.records.contains { $0.entry.event == .misbehaved }, "\(peer) was not held to have misbehaved")
            #expect(log.records.contains { $0.entry.event == .received && $0.entry.task != nil })
        }
    }

    /// A peer whose signed transcript does not match what it sent is reported, and the mismatch is audited.
    @Test func aTranscriptThatDoesNotMatchIsMisbehaviour() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let liar = try mesh.node("liar")
        try a.trust(liar)
        let runningA = try await a.start { $0.capabilities = [CapabilitySpec(name: "echo", executor: .builtinEcho)] }
        let session = try await liar.openSession(to: runningA.address)
        try await session.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established(let peer)? = try await events.next() else {
                Issue.record("no session")
                return
            }
            var transcript = Transcript()
            transcript.append(digest: SHA256.hash([1]))  // a message it never sent
            try await outbound.write(.transcript(TranscriptCheckpoint(
                signing: transcript, handshakeHash: peer.handshakeHash, with: liar.identity.signingKey)))
            #expect(await eventually { !a.logs.matching("peer misbehaved", ["peer": "liar \(liar.id.short)"]).isEmpty })
        }
        await runningA.stop()
        let log = try #require(AuditFolder.read(a.home.auditDirectory, keepRecords: true).first?.report)
        #expect(log.problem == nil)
        #expect(log.records.contains { $0.entry.event == .misbehaved && $0.entry.detail.contains("transcript") })
        #expect(log.peerCheckpoints == 0)
    }

    /// Three forged records in a row: strikes add up to a ban, with the reason in the close frame and the log.
    /// A trusted peer floods keepalives: they are counted like any message, refused over the gossip limit, and the
    /// peer is banned (the close frame says so).
    @Test func aPingFloodIsBanned() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let mallory = try mesh.node("mallory")
        try a.trust(mallory)
        let runningA = try await a.start()
        let session = try await mallory.openSession(to: runningA.address)
        let reason = try await session.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else { return SecureSession.CloseReason?.none }
            for nonce in 0..<2_000 {
                do { try await outbound.write(.ping(nonce: UInt64(nonce))) } catch { break }
            }
            while let event = try? await events.next() {
                if case .closed(let why) = event { return why }
            }
            return nil
        }
        #expect(reason == nil || reason?.code == SecureSession.CloseReason.bannedCode, "\(String(describing: reason))")
        let limits = await runningA.node.limitsReport()
        let peer = try #require(limits.peers.first { $0.name == "mallory" })
        #expect(peer.bans == 1)
        #expect(peer.bannedUntil != nil)
        await runningA.stop()
    }

    /// A trusted peer sends one gossip message stuffed with copies of a well-signed record of a node nobody here
    /// trusts: it costs the node no signature check, it is counted against the peer's gossip budget, and the node
    /// keeps answering.
    @Test func gossipStuffedWithUntrustedRecordsIsCheapAndCounted() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let mallory = try mesh.node("mallory")
        let stranger = try mesh.node("stranger")
        try a.trust(mallory)
        let runningA = try await a.start()
        let record = MemberRecord(
            identity: stranger.identity.publicIdentity, address: "127.0.0.1:1", incarnation: 1, capabilities: [],
            load: 0, signer: .ed25519(stranger.identity))
        let session = try await mallory.openSession(to: runningA.address)
        try await session.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else { return }
            // As many records as fit in one message (the session's message limit bounds the rest).
            try await outbound.write(.membership(.gossip(updates: .init(repeating: .alive(record), count: 5_000))))
            #expect(await eventually {
                let gossip = await runningA.node.limitsReport().peers.first { $0.name == "mallory" }?
                    .classes.first { $0.limitClass == "gossip" }
                return (gossip?.accepted ?? 0) >= 1 && (gossip?.tokensLeft ?? 400) < 300
            }, "the message cost a token per 32 records, not one")
        }
        #expect(await runningA.members("alive").isEmpty, "the stranger never became a member")
        #expect(a.logs.matching("peer misbehaved").isEmpty, "records of an untrusted node are not a crime, just useless")
        await runningA.stop()
    }

    @Test func repeatedMisbehaviourIsBanned() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let victim = try mesh.node("victim")
        let mallory = try mesh.node("mallory")
        // a trusts the victim: records of a node it does not trust are dropped before any signature is checked.
        try a.trust(mallory, victim)
        let runningA = try await a.start()
        let session = try await mallory.openSession(to: runningA.address)
        let reason = try await session.executeThenClose { inbound, outbound in
            var events = inbound.makeAsyncIterator()
            guard case .established? = try await events.next() else { return SecureSession.CloseReason?.none }
            for incarnation in 1...3 {
                let forged = MemberRecord(
                    identity: victim.identity.publicIdentity, address: "127.0.0.1:1", incarnation: UInt64(incarnation),
                    capabilities: [], load: 0, signer: .ed25519(mallory.identity))
                try await outbound.write(.membership(.gossip(updates: [.alive(forged)])))
            }
            while let event = try await events.next() {
                if case .closed(let why) = event { return why }
            }
            return nil
        }
        #expect(reason?.code == SecureSession.CloseReason.bannedCode)
        #expect(reason?.text.contains("misbehaved") == true, "\(String(describing: reason))")
        await runningA.stop()
        let log = try #require(AuditFolder.read(a.home.auditDirectory, keepRecords: true).first?.report)
        #expect(log.records.filter { $0.entry.event == .misbehaved }.count == 3)
        #expect(log.records.contains { $0.entry.event == .banned })
    }

    /// Before anyone is authenticated, connection attempts are counted per source address: a burst beyond the
    /// limit is closed at once, and a real peer gets in once the bucket refills.
    @Test func connectionsOverThePerAddressLimitAreClosedAtOnce() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let b = try mesh.node("b")
        try a.trust(b)
        let runningA = try await a.start {
            $0.limitsLoopbackConnections = true
            $0.limits.rates[.connections] = Rate(perSecond: 5, burst: 5)
        }
        let connections = try (0..<30).map { _ in try RawConnection(to: runningA.address) }
        let closedAtOnce = try await offloaded { connections.filter { $0.closedByPeer(within: .milliseconds(300)) }.count }
        for connection in connections { connection.shut() }
        #expect(closedAtOnce >= 20, "only \(closedAtOnce) of 30 connections were refused")
        try await Task.sleep(for: .seconds(1.5))
        let session = try await b.openSession(to: runningA.address)
        let established = try await session.executeThenClose { inbound, _ in
            var events = inbound.makeAsyncIterator()
            if case .established? = try await events.next() { return true }
            return false
        }
        #expect(established, "a real peer gets in once the bucket refills")
        await runningA.stop()
    }

    /// The audit folder on a file system that fills up: the node refuses work that would go unaudited (peers' offers
    /// are declined `storage_unavailable`, its own clients get 507), loses no record, and takes work again once
    /// there is room.
    @Test(.enabled(if: canMountTmpfs, "needs root to mount a small tmpfs"))
    func aFullAuditDiskRefusesUnauditedWorkAndRecovers() async throws {
        let mesh = try TestMesh()
        let a = try mesh.node("a")
        let b = try mesh.node("b")
        try a.trust(b)
        try b.trust(a)
        let auditFolder = a.home.auditDirectory
        try FileManager.default.createDirectory(atPath: auditFolder, withIntermediateDirectories: true)
        try #require(mount("tmpfs", auditFolder, "tmpfs", 0, "size=1m") == 0)
        defer { umount(auditFolder) }
        // Room for every task b sends, so b keeps offering (rather than queueing behind tasks a cannot finish).
        let runningA = try await a.start { $0.capabilities = [CapabilitySpec(name: "echo", executor: .builtinEcho, concurrency: 1000)] }
        let runningB = try await b.start { $0.joins = [runningA.address] }
        #expect(await eventually { await runningB.members("alive").contains("a") })
        let first = try await TaskIntegrationTests.submit(runningB, "echo", ["n": 0])
        #expect(try await TaskIntegrationTests.wait(runningB, first).state == "completed")

        // Fill the file system to the last byte.
        let filler = auditFolder + "/filler"
        let descriptor = open(filler, O_WRONLY | O_CREAT, 0o600)
        let chunk = [UInt8](repeating: 0, count: 4096)
        while chunk.withUnsafeBytes({ write(descriptor, $0.baseAddress!, 4096) }) > 0 {}
        while chunk.withUnsafeBytes({ write(descriptor, $0.baseAddress!, 1) }) > 0 {}
        close(descriptor)

        // The log's last page still has room for a few records; tasks keep coming until an append fails.
        var submitted: [String] = []
        let filled = try await eventually(timeout: .seconds(20), interval: .milliseconds(50)) {
            submitted.append(try await TaskIntegrationTests.submit(runningB, "echo", ["n": submitted.count], timeout: 60, attempts: 50))
            return !a.logs.matching("cannot write the audit log; refusing work that would go unaudited until it can").isEmpty
        }
        #expect(filled)
        // The failed append may have come between two tasks (a checkpoint): one more offer finds the disk full.
        submitted.append(try await TaskIntegrationTests.submit(runningB, "echo", ["n": submitted.count], timeout: 60, attempts: 50))
        #expect(await eventually(timeout: .seconds(15)) {
            var declined = false
            for id in submitted {
                let task = try? await TaskIntegrationTests.wait(runningB, id, seconds: 0)
                declined = declined || task?.attempts.contains { $0.outcome == "declined: storage_unavailable" } == true
            }
            return declined
        }, "a declines work it cannot audit")
        let refused = try await TaskIntegrationTests.post(runningA, "echo", ["n": 2])
        #expect(refused.status == 507)
        #expect(String(decoding: refused.body, as: UTF8.self).contains("audit"))

        try FileManager.default.removeItem(atPath: filler)
        for id in submitted {
            let task = try await TaskIntegrationTests.wait(runningB, id, seconds: 30)
            #expect(task.state == "completed", "\(task.error ?? task.state)")
        }
        #expect(!a.logs.matching("the audit log is writable again; taking new tasks").isEmpty)
        await runningB.stop()
        await runningA.stop()
        for log in AuditFolder.read(auditFolder, keepRecords: true) {
            let report = try #require(log.report, "\(log.file): \(log.error ?? "")")
            #expect(report.problem == nil, "\(log.file): \(report.problem?.description ?? "")")
            #expect(report.incompleteTail == 0)
            if report.header.peerName == "b" {
                let offered = Set(report.records.filter { $0.entry.event == .received && $0.entry.message == 1 }
                    .compactMap { $0.entry.task?.description })
                #expect(Set(submitted).isSubset(of: offered), "every offer, also those received while the disk was full, is recorded")
            }
        }
    }
}
