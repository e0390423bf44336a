import MeshCore
import MeshStorage

/// A new task as a way in (the control API, A2A) hands it to ``MeshNode/admit(_:then:)``, checked for what is
/// particular to that way in (its request's shape and options).
struct TaskAdmission: Sendable {
    let id: TaskID
    let capability: String
    /// The task's input as the submitter stores and offers it (``TaskPayload`` encoded).
    let payload: [UInt8]
    let timeout: Duration
    let maximumAttempts: Int
    let options: TaskOptions
    /// Queue the task until a member offers the capability, instead of refusing it.
    let waitForCapability: Bool
    /// How this way in asks to wait, for the refusal's sentence.
    var howToWait = "submit with wait_for_capability (--wait-for-capability) to queue it until one does"
}

/// Why a task was not taken; nothing of it was kept.
enum AdmissionRefusal: Error, Sendable {
    /// The task store or the audit log cannot be written now.
    case cannotStore(String)
    /// No live member offers the capability, and the client did not ask to wait for one.
    case noMember(String)
    /// The store failed while committing the task.
    case notStored(String)

    /// The control API's status for it.
    var status: Int {
        switch self {
        case .cannotStore, .notStored: return 507
        case .noMember: return 409
        }
    }

    var message: String {
        switch self {
        case .cannotStore(let message), .noMember(let message), .notStored(let message): return message
        }
    }
}

extension MeshNode {
    /// The one way into the task path: every way in gets the same refusals (a store or audit log that cannot be
    /// written, a capability nobody offers) and the same promise, that `then` hears "accepted" only once the task is
    /// durable under the node's durability mode, so a `kill -9` right after the answer loses nothing. A task the
    /// store failed to commit is abandoned, and `then` gets why.
    func admit(_ admission: TaskAdmission, then: @escaping (Result<Void, AdmissionRefusal>) -> Void) {
        guard self.taskPlane.commitGate.isStoreWritable else {
            return then(.failure(.cannotStore(
                "this node cannot store new tasks now (\(self.taskStore?.path ?? "its task store") is not writable); try another node")))
        }
        guard self.taskPlane.commitGate.isAuditWritable else {
            return then(.failure(.cannotStore(
                "this node cannot audit new work now (\(self.auditLog?.directory ?? "its audit log") is not writable); try another node")))
        }
        if !self.submitter.hasCandidate(for: admission.capability) {
            // The task machine hears of members on its tick; membership may already know one that offers it.
            let candidates = self.taskCandidates()
            if candidates.contains(where: { $0.capabilities[admission.capability] != nil }) {
                self.runSubmitter { $0.candidatesChanged(candidates, now: self.now) }
            } else if !admission.waitForCapability {
                let offered = Set(candidates.flatMap(\.capabilities.keys)).sorted()
                return then(.failure(.noMember("no live member offers \(admission.capability)"
                    + (offered.isEmpty ? " (no member offers any capability now)" : "; offered now: \(offered.joined(separator: ", "))")
                    + "; \(admission.howToWait)")))
            }
        }
        self.runSubmitter {
            $0.submit(
                id: admission.id, capability: admission.capability, input: admission.payload, timeout: admission.timeout,
                maximumAttempts: admission.maximumAttempts, options: admission.options, now: self.now)
        }
        self.metricsTaskSubmitted(admission.capability)
        self.whenStored(self.taskStore?.lastQueued ?? 0) { error in
            guard let error else { return then(.success(())) }
            self.runSubmitter { $0.abandon(admission.id) }
            then(.failure(.notStored("the task could not be stored: \(error.description); nothing was submitted")))
        }
    }
}
