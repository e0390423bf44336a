public import Foundation
package import MeshCore

/// The version `agentmesh --version` and `GET /v1/node` report.
public enum AgentMeshVersion {
    public static let current = "0.2.0"
}

/// JSON documents of the control API. `agentmesh` decodes the same types it serves, so client and server cannot
/// drift apart.
public enum ControlAPI {
    public struct NodeInfo: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        public let version: String
        /// Where the peer listener is bound, with the port it got.
        public let listen: String
        /// The address peers dial (`--advertise`; the same as `listen` without it).
        public let advertise: String
        public let identityLine: String
        public let open: Bool
        public let startedAt: Date
        /// What the audit log has cost since the node started.
        public let audit: AuditCost?
        /// Each `--join` address: whether a session through it is up, and why the last dial failed.
        public let joins: [JoinStatus]
        /// "ok", or why the task store cannot be written now.
        public let store: String
        /// "ok", or why the audit log cannot be written now.
        public let auditLog: String
        /// Messages (and their bytes) received from peers since the node started.
        public let messagesReceived: UInt64
        public let bytesReceived: UInt64
        /// What the node could not read back from its store when it started (each skipped, and logged).
        public let restoreProblems: [String]
        /// Where the control API listens over TCP (`run --http`), with the port it got (for `--http HOST:0`).
        public let http: String?

        package init(
            id: String, name: String, listen: String, advertise: String, identityLine: String, open: Bool, startedAt: Date,
            audit: AuditCost?, joins: [JoinStatus] = [], store: String = "ok", auditLog: String = "ok",
            messagesReceived: UInt64 = 0, bytesReceived: UInt64 = 0, restoreProblems: [String] = [], http: String? = nil
        ) {
            self.restoreProblems = restoreProblems
            self.http = http
            self.id = id
            self.name = name
            self.version = AgentMeshVersion.current
            self.listen = listen
            self.advertise = advertise
            self.identityLine = identityLine
            self.open = open
            self.startedAt = startedAt
            self.audit = audit
            self.joins = joins
            self.store = store
            self.auditLog = auditLog
            self.messagesReceived = messagesReceived
            self.bytesReceived = bytesReceived
        }
    }

    public struct JoinStatus: Codable, Sendable, Equatable {
        public let address: String
        public let connected: Bool
        public let lastError: String?
        public let lastErrorAt: Date?

        package init(address: String, connected: Bool, lastError: String?, lastErrorAt: Date?) {
            self.address = address
            self.connected = connected
            self.lastError = lastError
            self.lastErrorAt = lastErrorAt
        }
    }

    public struct AuditCost: Codable, Sendable, Equatable {
        public let records: UInt64
        public let bytes: UInt64
        public let syncs: UInt64
        /// Seconds the audit writer thread was busy (building, hashing, signing, writing, syncing records).
        public let writerBusySeconds: Double

        package init(records: UInt64, bytes: UInt64, syncs: UInt64, writerBusySeconds: Double) {
            self.records = records
            self.bytes = bytes
            self.syncs = syncs
            self.writerBusySeconds = writerBusySeconds
        }
    }

    public struct CapabilityInfo: Codable, Sendable, Equatable {
        public let name: String
        public let capacity: Int

        package init(_ capability: Capability) {
            self.name = capability.name
            self.capacity = Int(capability.capacity)
        }
    }

    public struct Member: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        /// The address the member listens on, from its signed record.
        public let address: String
        /// `alive`, `suspect`, `dead` or `left`.
        public let status: String
        public let incarnation: UInt64
        public let capabilities: [CapabilityInfo]
        /// Tasks running on the member.
        public let load: UInt32
        /// When this node last learned anything about the member.
        public let lastHeard: Date
        /// Who claimed the member suspect or dead.
        public let accuser: String?
        /// The remote end of the TCP session, when one is open.
        public let remoteAddress: String?
        /// `self`, `inbound` (the member dialled us), `outbound` (we dialled it) or `none`.
        public let connection: String
        /// `trusted` (descriptor in peers/), `open` (admitted by --open) or `self`.
        public let trust: String
        /// Since when the session has been open.
        public let since: Date?

        package init(id: String, name: String, address: String, status: String, incarnation: UInt64, capabilities: [CapabilityInfo], load: UInt32, lastHeard: Date, accuser: String?, remoteAddress: String?, connection: String, trust: String, since: Date?) {
            self.id = id
            self.name = name
            self.address = address
            self.status = status
            self.incarnation = incarnation
            self.capabilities = capabilities
            self.load = load
            self.lastHeard = lastHeard
            self.accuser = accuser
            self.remoteAddress = remoteAddress
            self.connection = connection
            self.trust = trust
            self.since = since
        }
    }

    public struct Members: Codable, Sendable, Equatable {
        public let members: [Member]

        package init(members: [Member]) {
            self.members = members
        }
    }

    /// One limited class of one peer: its budget and what the peer did with it.
    public struct LimitUsage: Codable, Sendable, Equatable {
        /// `gossip`, `offers`, `results` or `bytes`.
        public let limitClass: String
        /// `RATE/s:BURST`.
        public let rate: String
        public let tokensLeft: Double
        public let accepted: UInt64
        /// Declined (offers) or dropped (everything else).
        public let refused: UInt64

        package init(limitClass: String, rate: String, tokensLeft: Double, accepted: UInt64, refused: UInt64) {
            self.limitClass = limitClass
            self.rate = rate
            self.tokensLeft = tokensLeft
            self.accepted = accepted
            self.refused = refused
        }
    }

    public struct PeerLimits: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        public let connected: Bool
        /// The end of the current ban, if the peer is banned now.
        public let bannedUntil: Date?
        /// How many times the peer has been banned since this node started.
        public let bans: Int
        public let classes: [LimitUsage]

        package init(id: String, name: String, connected: Bool, bannedUntil: Date?, bans: Int, classes: [LimitUsage]) {
            self.id = id
            self.name = name
            self.connected = connected
            self.bannedUntil = bannedUntil
            self.bans = bans
            self.classes = classes
        }
    }

    public struct Limits: Codable, Sendable, Equatable {
        /// Node-wide rates by class (`run --limit`, `config.toml`), before per-peer overrides.
        public let defaults: [String: String]
        public let peers: [PeerLimits]

        package init(defaults: [String: String], peers: [PeerLimits]) {
            self.defaults = defaults
            self.peers = peers
        }
    }

    /// Any JSON value, carried through Codable documents unchanged (task inputs and results).
    public struct JSONValue: Codable, @unchecked Sendable, Equatable {
        public let value: Any

        public init(_ value: Any) { self.value = value }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self.value = NSNull()
            } else if let bool = try? container.decode(Bool.self) {
                self.value = bool
            } else if let number = try? container.decode(Double.self) {
                self.value = number
            } else if let string = try? container.decode(String.self) {
                self.value = string
            } else if let array = try? container.decode([JSONValue].self) {
                self.value = array.map(\.value)
            } else {
                self.value = try container.decode([String: JSONValue].self).mapValues(\.value)
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            // Swift Bools and JSONSerialization's NSNumbers both bridge to Bool and to NSNumber, so tell them apart
            // by their real type: otherwise 1 would come back as true.
            if let bool = self.value as? Bool, type(of: self.value) == Bool.self {
                try container.encode(bool)
                return
            }
            switch self.value {
            case is NSNull: try container.encodeNil()
            case let number as NSNumber:
                switch String(cString: number.objCType) {
                case "c", "B": try container.encode(number.boolValue)
                case "d", "f": try container.encode(number.doubleValue)
                default: try container.encode(number.int64Value)
                }
            case let string as String: try container.encode(string)
            case let array as [Any]: try container.encode(array.map(JSONValue.init))
            case let object as [String: Any]: try container.encode(object.mapValues(JSONValue.init))
            default: try container.encodeNil()
            }
        }

        public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
            (try? JSONSerialization.data(withJSONObject: lhs.value, options: [.fragmentsAllowed, .sortedKeys]))
                == (try? JSONSerialization.data(withJSONObject: rhs.value, options: [.fragmentsAllowed, .sortedKeys]))
        }
    }

    /// A submission as a node reads it: one pass of `JSONSerialization` (the Codable path tried every JSON type on
    /// every value of the input, a measurable share of each task's CPU). Wrong types are errors, as they are for
    /// the decoder; `null` for an optional field is its default.
    /// Why a body is not a task, naming the field.
    package struct SubmitError: Error, CustomStringConvertible {
        package let description: String
        init(_ description: String) { self.description = description }
    }

    public struct SubmitRequest: Codable, Sendable {
        public let capability: String
        public let input: JSONValue
        public let timeoutSeconds: Double?
        public let maxAttempts: Int?
        /// Queue the task even when no live member offers the capability (otherwise it is refused at once).
        public let waitForCapability: Bool?
        /// A URL the node POSTs the finished task to (a webhook), signed with its `webhook.secret`.
        public let callback: String?
        /// `final` (the default) or `all`: every state change, not only the end.
        public let callbackEvents: String?
        /// W3C trace context (also accepted as the `traceparent` header); a new trace when absent.
        public let traceparent: String?
        /// The conversation the task belongs to: it prefers the member that ran the conversation's previous task.
        public let context: String?
        /// Pause the deadline while the agent waits for an answer, for at most this many seconds.
        public let inputTimeoutSeconds: Double?
        /// Artifacts the task takes, stored on this node first (`POST /v1/artifacts` answers each one's reference).
        public let artifacts: [ArtifactInfo]?

        public init(
            capability: String, input: JSONValue, timeoutSeconds: Double?, maxAttempts: Int?, waitForCapability: Bool? = nil,
            callback: String? = nil, callbackEvents: String? = nil, context: String? = nil, inputTimeoutSeconds: Double? = nil,
            traceparent: String? = nil, artifacts: [ArtifactInfo]? = nil
        ) {
            self.artifacts = artifacts
            self.traceparent = traceparent
            self.context = context
            self.inputTimeoutSeconds = inputTimeoutSeconds
            self.capability = capability
            self.input = input
            self.timeoutSeconds = timeoutSeconds
            self.maxAttempts = maxAttempts
            self.waitForCapability = waitForCapability
            self.callback = callback
            self.callbackEvents = callbackEvents
        }

        /// The fields a submission may have; any other is refused by name (a typo such as `timeout_second` would
        /// otherwise be dropped without a word).
        package static let fields: Set = [
            "capability", "input", "timeout_seconds", "max_attempts", "wait_for_capability", "callback", "callback_events",
            "context", "traceparent", "input_timeout_seconds", "artifacts",
        ]

        package init(parsing body: [UInt8]) throws(SubmitError) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
                throw SubmitError("the body is not a JSON object")
            }
            if let unknown = Set(object.keys).subtracting(Self.fields).sorted().first {
                throw SubmitError("unknown field '\(unknown.prefix(64))' (known: \(Self.fields.sorted().joined(separator: ", ")))")
            }
            guard let capability = object["capability"] as? String else { throw SubmitError("capability must be a string") }
            guard let input = object["input"] else { throw SubmitError("input is missing (any JSON value; null for none)") }
            func number(_ key: String) throws(SubmitError) -> NSNumber? {
                guard let value = object[key], !(value is NSNull) else { return nil }
                guard let number = value as? NSNumber, type(of: value) != Bool.self,
                    !["c", "B"].contains(String(cString: number.objCType))
                else { throw SubmitError("\(key) must be a number") }
                return number
            }
            self.capability = capability
            self.input = JSONValue(input)
            self.timeoutSeconds = try number("timeout_seconds")?.doubleValue
            if let attempts = try number("max_attempts") {
                let value = attempts.doubleValue
                guard value == value.rounded(), abs(value) < 1e9 else { throw SubmitError("max_attempts must be a whole number") }
                self.maxAttempts = Int(value)
            } else {
                self.maxAttempts = nil
            }
            if let value = object["wait_for_capability"], !(value is NSNull) {
                guard let flag = value as? NSNumber,
                    type(of: value) == Bool.self || ["c", "B"].contains(String(cString: flag.objCType))
                else { throw SubmitError("wait_for_capability must be true or false") }
                self.waitForCapability = flag.boolValue
            } else {
                self.waitForCapability = nil
            }
            func text(_ key: String) throws(SubmitError) -> String? {
                guard let value = object[key], !(value is NSNull) else { return nil }
                guard let text = value as? String else { throw SubmitError("\(key) must be a string") }
                return text
            }
            self.callback = try text("callback")
            self.callbackEvents = try text("callback_events")
            self.context = try text("context")
            self.traceparent = try text("traceparent")
            self.inputTimeoutSeconds = try number("input_timeout_seconds")?.doubleValue
            if let value = object["artifacts"], !(value is NSNull) {
                guard let list = value as? [Any], list.count <= 64 else { throw SubmitError("artifacts must be a list of at most 64") }
                self.artifacts = try list.map { item throws(SubmitError) in
                    guard let fields = item as? [String: Any], let digest = fields["sha256"] as? String else {
                        throw SubmitError("each artifact must be an object with its sha256")
                    }
                    return ArtifactInfo(
                        sha256: digest, size: (fields["size"] as? NSNumber)?.uint64Value ?? 0,
                        mediaType: fields["media_type"] as? String, name: fields["name"] as? String)
                }
            } else {
                self.artifacts = nil
            }
        }
    }

    /// `GET /v1/audit`: each per-peer audit log's verification, and its newest records (`agentmesh audit` shows the same).
    public struct AuditSummary: Codable, Sendable {
        public let logs: [AuditLogState]
        public let records: [AuditRecordInfo]

        public init(logs: [AuditLogState], records: [AuditRecordInfo]) {
            self.logs = logs
            self.records = records
        }
    }

    public struct AuditLogState: Codable, Sendable {
        public let file: String
        public let peerID: String?
        public let peerName: String?
        public let ok: Bool
        public let records: UInt64
        public let checkpoints: Int
        public let peerCheckpoints: Int
        public let unsignedAtEnd: Int
        public let incompleteTail: Int
        public let problem: String?

        public init(
            file: String, peerID: String?, peerName: String?, ok: Bool, records: UInt64, checkpoints: Int, peerCheckpoints: Int,
            unsignedAtEnd: Int, incompleteTail: Int, problem: String?
        ) {
            self.file = file
            self.peerID = peerID
            self.peerName = peerName
            self.ok = ok
            self.records = records
            self.checkpoints = checkpoints
            self.peerCheckpoints = peerCheckpoints
            self.unsignedAtEnd = unsignedAtEnd
            self.incompleteTail = incompleteTail
            self.problem = problem
        }
    }

    public struct AuditRecordInfo: Codable, Sendable {
        public let peerID: String
        public let peerName: String
        public let index: UInt64
        /// RFC 3339, UTC, to the millisecond.
        public let time: String
        public let timeMilliseconds: Int64
        public let event: String
        public let session: UInt64
        public let message: String?
        public let task: String?
        public let epoch: UInt32
        public let digest: String?
        public let detail: String

        public init(
            peerID: String, peerName: String, index: UInt64, time: String, timeMilliseconds: Int64, event: String, session: UInt64,
            message: String?, task: String?, epoch: UInt32, digest: String?, detail: String
        ) {
            self.peerID = peerID
            self.peerName = peerName
            self.index = index
            self.time = time
            self.timeMilliseconds = timeMilliseconds
            self.event = event
            self.session = session
            self.message = message
            self.task = task
            self.epoch = epoch
            self.digest = digest
            self.detail = detail
        }
    }

    /// An artifact's reference: `POST /v1/artifacts` answers one, a submission lists them under `artifacts`, and a
    /// task shows its input's (`artifacts`) and its result's (`result_artifacts`). Fetch the bytes with
    /// `GET /v1/artifacts/SHA256`.
    public struct ArtifactInfo: Codable, Sendable, Equatable {
        public let sha256: String
        public let size: UInt64
        /// Taken from the stored artifact when a submission leaves it out.
        public let mediaType: String?
        public let name: String?

        public init(sha256: String, size: UInt64, mediaType: String?, name: String?) {
            self.sha256 = sha256
            self.size = size
            self.mediaType = mediaType
            self.name = name
        }
    }

    public struct AttemptInfo: Codable, Sendable, Equatable {
        public let epoch: Int
        public let peer: String
        public let peerName: String
        public let offeredAt: Date
        public let acceptedAt: Date?
        public let endedAt: Date?
        public let outcome: String?

        package init(epoch: Int, peer: String, peerName: String, offeredAt: Date, acceptedAt: Date?, endedAt: Date?, outcome: String?) {
            self.epoch = epoch
            self.peer = peer
            self.peerName = peerName
            self.offeredAt = offeredAt
            self.acceptedAt = acceptedAt
            self.endedAt = endedAt
            self.outcome = outcome
        }
    }

    public struct TaskInfo: Codable, Sendable, Equatable {
        public let id: String
        public let capability: String
        public let state: String
        public let submittedAt: Date
        public let deadline: Date
        public let attempts: [AttemptInfo]
        /// The member that ran (or runs) the task: the last attempt it accepted.
        public let executedBy: String?
        public let finishedAt: Date?
        public let result: JSONValue?
        public let error: String?
        /// Why a task in `submitted` waits, in one sentence.
        public let waiting: String?
        public let context: String?
        /// The agent's question, while the task is `input_required` (answer with `POST /v1/tasks/ID/input`).
        public let question: JSONValue?
        /// The W3C trace the task belongs to.
        public let traceId: String?
        /// The artifacts the task took, and those its result gave (`GET /v1/artifacts/SHA256` for the bytes).
        public let artifacts: [ArtifactInfo]?
        public let resultArtifacts: [ArtifactInfo]?

        package init(
            id: String, capability: String, state: String, submittedAt: Date, deadline: Date, attempts: [AttemptInfo],
            executedBy: String?, finishedAt: Date? = nil, result: JSONValue?, error: String?, waiting: String? = nil,
            context: String? = nil, question: JSONValue? = nil, traceId: String? = nil, artifacts: [ArtifactInfo]? = nil,
            resultArtifacts: [ArtifactInfo]? = nil
        ) {
            self.artifacts = artifacts
            self.resultArtifacts = resultArtifacts
            self.traceId = traceId
            self.context = context
            self.question = question
            self.id = id
            self.capability = capability
            self.state = state
            self.submittedAt = submittedAt
            self.deadline = deadline
            self.attempts = attempts
            self.executedBy = executedBy
            self.finishedAt = finishedAt
            self.result = result
            self.error = error
            self.waiting = waiting
        }
    }

    /// `GET /v1/tasks/ID/logs`: what the executor wrote to stderr (the node keeps the last 64 KiB of each task's).
    public struct TaskLog: Codable, Sendable, Equatable {
        public let id: String
        /// The byte offsets of `text` in the whole log; pass `to` as `after` to read on.
        public let from: Int
        public let to: Int
        /// Bytes after the requested offset that are no longer kept.
        public let dropped: Int
        public let text: String
        /// The task has ended: nothing more will come.
        public let finished: Bool

        package init(id: String, from: Int, to: Int, dropped: Int, text: String, finished: Bool) {
            self.id = id
            self.from = from
            self.to = to
            self.dropped = dropped
            self.text = text
            self.finished = finished
        }
    }

    /// `POST /v1/workflows`: a workflow definition (as JSON; the CLI reads YAML into it) and the run's input.
    public struct WorkflowRequest: Codable, Sendable {
        public let workflow: JSONValue
        public let input: JSONValue?
        /// Where to POST the finished run (overrides the definition's `callback`).
        public let callback: String?
        /// With a callback: also POST every state change, not only the end.
        public let callbackEvents: String?

        public init(workflow: JSONValue, input: JSONValue?, callback: String? = nil, callbackEvents: String? = nil) {
            self.workflow = workflow
            self.input = input
            self.callback = callback
            self.callbackEvents = callbackEvents
        }
    }

    /// One step of a workflow run.
    public struct WorkflowStep: Codable, Sendable, Equatable {
        public let name: String
        public let capability: String
        /// pending, running, completed, failed, skipped or canceled.
        public let state: String
        public let after: [String]
        /// Items of a map step (1 for a plain step), and how many ended which way.
        public let items: Int
        public let completed: Int
        public let failed: Int
        public let running: Int
        public let isMap: Bool
        /// The step's tasks (one per item that started), to follow with `agentmesh task`.
        public let tasks: [String]
        public let error: String?
        public let output: JSONValue?
        public let startedAt: Date?
        public let endedAt: Date?
        /// From start to end (or to now), to the millisecond.
        public let seconds: Double?
        /// Once the run aborts: compensated, compensating, compensation failed: REASON (nil if nothing to undo).
        public let compensation: String?
        public let compensationTasks: [String]
        /// Why a running step's tasks have not been offered yet (as `task` says it), if one of them waits.
        public let waiting: String?

        package init(
            name: String, capability: String, state: String, after: [String], items: Int, completed: Int, failed: Int,
            running: Int, isMap: Bool, tasks: [String], error: String?, output: JSONValue?, startedAt: Date?, endedAt: Date?,
            seconds: Double?, compensation: String?, compensationTasks: [String], waiting: String?
        ) {
            self.waiting = waiting
            self.seconds = seconds
            self.name = name
            self.capability = capability
            self.state = state
            self.after = after
            self.items = items
            self.completed = completed
            self.failed = failed
            self.running = running
            self.isMap = isMap
            self.tasks = tasks
            self.error = error
            self.output = output
            self.startedAt = startedAt
            self.endedAt = endedAt
            self.compensation = compensation
            self.compensationTasks = compensationTasks
        }
    }

    /// A workflow run as its owning node reports it.
    public struct WorkflowInfo: Codable, Sendable, Equatable {
        public let id: String
        public let name: String
        /// running, completed, failed, compensating, compensated, compensation_failed or canceled.
        public let state: String
        /// Goes up with every change; `GET /v1/workflows/ID?version=N&wait=S` answers once it passes N.
        public let version: Int
        public let submittedAt: Date
        public let finishedAt: Date?
        /// From submission to the end (or to now), to the millisecond.
        public let seconds: Double
        public let input: JSONValue
        public let output: JSONValue?
        public let error: String?
        public let compensationFailed: [String]?
        public let steps: [WorkflowStep]

        package init(
            id: String, name: String, state: String, version: Int, submittedAt: Date, finishedAt: Date?, seconds: Double,
            input: JSONValue, output: JSONValue?, error: String?, compensationFailed: [String]?, steps: [WorkflowStep]
        ) {
            self.seconds = seconds
            self.id = id
            self.name = name
            self.state = state
            self.version = version
            self.submittedAt = submittedAt
            self.finishedAt = finishedAt
            self.input = input
            self.output = output
            self.error = error
            self.compensationFailed = compensationFailed
            self.steps = steps
        }

        public var isFinished: Bool { !["running", "compensating"].contains(self.state) }
    }

    public struct WorkflowList: Codable, Sendable, Equatable {
        public let workflows: [WorkflowInfo]
        package init(workflows: [WorkflowInfo]) { self.workflows = workflows }
    }

    /// `POST /v1/events`'s answer: 200 once every live member has the event, 202 if some had not acknowledged it
    /// within 2 s (the node keeps sending it to them).
    /// `POST /v1/events`: `{"topic": T, "data": …}`; any other field is refused by name.
    public struct PublishRequest: Sendable {
        public let topic: String
        public let data: JSONValue

        public init(topic: String, data: JSONValue) {
            self.topic = topic
            self.data = data
        }

        public var body: [UInt8] {
            Array((try? JSONSerialization.data(withJSONObject: ["topic": self.topic, "data": self.data.value], options: [.fragmentsAllowed])) ?? Data())
        }

        package init(parsing body: [UInt8]) throws(SubmitError) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
                throw SubmitError("the request is not an event: send JSON like {\"topic\": \"NAME\", \"data\": {…}}")
            }
            if let unknown = Set(object.keys).subtracting(["topic", "data"]).sorted().first {
                throw SubmitError("unknown field '\(unknown.prefix(64))' (an event has topic and data)")
            }
            guard let topic = object["topic"] as? String else { throw SubmitError("topic must be a string") }
            self.topic = topic
            self.data = JSONValue(object["data"] ?? NSNull())
        }
    }

    public struct PublishedEvent: Codable, Sendable, Equatable {
        public let id: String
        public let topic: String
        /// Live members it was sent to.
        public let members: Int
        public let waitingFor: [String]

        package init(id: String, topic: String, members: Int, waitingFor: [String]) {
            self.id = id
            self.topic = topic
            self.members = members
            self.waitingFor = waitingFor
        }
    }

    /// One event in a node's history.
    public struct EventInfo: Codable, Sendable, Equatable {
        /// The order this node received it in; pass the last one seen as `after`.
        public let sequence: Int
        public let id: String
        public let topic: String
        /// The node that published it.
        public let origin: String
        public let time: Date
        public let data: JSONValue
        /// What each of this node's subscriptions made of it (`ran`, `failed: …`, `workflow ID`).
        public let outcomes: [String: String]?

        package init(sequence: Int, id: String, topic: String, origin: String, time: Date, data: JSONValue, outcomes: [String: String]?) {
            self.sequence = sequence
            self.id = id
            self.topic = topic
            self.origin = origin
            self.time = time
            self.data = data
            self.outcomes = outcomes
        }
    }

    /// `GET /v1/events`: the history after a sequence number, oldest first.
    public struct EventHistory: Codable, Sendable, Equatable {
        public let events: [EventInfo]
        public let next: Int

        package init(events: [EventInfo], next: Int) {
            self.events = events
            self.next = next
        }
    }

    /// Seconds: how many samples, p50, p90, p99 (within 5 %) and the mean.
    public struct Timing: Codable, Sendable, Equatable {
        public let count: Int
        public let p50: Double
        public let p90: Double
        public let p99: Double
        public let mean: Double

        package init(_ count: Int, _ p50: Double, _ p90: Double, _ p99: Double, _ mean: Double) {
            (self.count, self.p50, self.p90, self.p99, self.mean) = (count, p50, p90, p99, mean)
        }
    }

    /// How one capability did (peer nil), or one capability on one executing peer.
    public struct StatsRow: Codable, Sendable, Equatable {
        public let capability: String
        public let peer: String?
        /// Tasks that ended (any way).
        public let executions: Int
        public let successRate: Double
        /// From the accept to the end of the attempt that ran it.
        public let execution: Timing
        /// From submission to that accept.
        public let queueWait: Timing

        package init(capability: String, peer: String?, executions: Int, successRate: Double, execution: Timing, queueWait: Timing) {
            self.capability = capability
            self.peer = peer
            self.executions = executions
            self.successRate = successRate
            self.execution = execution
            self.queueWait = queueWait
        }
    }

    /// `GET /v1/stats`: the tasks submitted here, since the node started and in the last five minutes.
    public struct Stats: Codable, Sendable, Equatable {
        public let lifetime: [StatsRow]
        public let lastFiveMinutes: [StatsRow]

        package init(lifetime: [StatsRow], lastFiveMinutes: [StatsRow]) {
            self.lifetime = lifetime
            self.lastFiveMinutes = lastFiveMinutes
        }
    }

    /// One progress event an agent emitted while running a task.
    public struct TaskEventInfo: Codable, Sendable, Equatable {
        /// Numbered from 1 across the task's attempts; pass the last one seen as `after` (or `Last-Event-ID`).
        public let sequence: Int
        public let attempt: Int
        public let time: Date
        public let data: JSONValue

        package init(sequence: Int, attempt: Int, time: Date, data: JSONValue) {
            self.sequence = sequence
            self.attempt = attempt
            self.time = time
            self.data = data
        }
    }

    /// `GET /v1/tasks/ID/events`: the progress events kept for a task after a given number.
    public struct TaskEvents: Codable, Sendable, Equatable {
        public let id: String
        public let events: [TaskEventInfo]
        /// The number to pass as `after` next.
        public let next: Int
        /// The task has ended: nothing more will come.
        public let finished: Bool

        package init(id: String, events: [TaskEventInfo], next: Int, finished: Bool) {
            self.id = id
            self.events = events
            self.next = next
            self.finished = finished
        }
    }

    /// A task a peer offered this node and it accepted: what `tasks --executing` lists on a worker.
    public struct ExecutingTask: Codable, Sendable, Equatable {
        public let id: String
        public let capability: String
        public let submitter: String
        public let attempt: Int
        /// running, held (restored after a restart, waiting for the submitter's go-ahead) or reported (the result
        /// waits for the submitter's acknowledgement).
        public let state: String
        public let deadline: Date

        package init(id: String, capability: String, submitter: String, attempt: Int, state: String, deadline: Date) {
            self.id = id
            self.capability = capability
            self.submitter = submitter
            self.attempt = attempt
            self.state = state
            self.deadline = deadline
        }
    }

    public struct ExecutingTasks: Codable, Sendable, Equatable {
        public let tasks: [ExecutingTask]

        package init(tasks: [ExecutingTask]) { self.tasks = tasks }
    }

    /// `GET /v1/health`: 200 while the node serves and can store tasks and audit records, 503 otherwise.
    public struct Health: Codable, Sendable, Equatable {
        public let status: String
        public let store: String
        public let audit: String
        public let members: Int

        package init(status: String, store: String, audit: String, members: Int) {
            self.status = status
            self.store = store
            self.audit = audit
            self.members = members
        }
    }

    public struct TaskList: Codable, Sendable, Equatable {
        public let tasks: [TaskInfo]

        package init(tasks: [TaskInfo]) {
            self.tasks = tasks
        }
    }

    public struct ErrorBody: Codable, Sendable {
        public let error: String
        public init(error: String) { self.error = error }
    }

    /// Compact JSON for programs; `pretty` for a person reading a terminal.
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(Timestamp.string(date))
        }
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = Timestamp.parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not an RFC 3339 time")
            }
            return date
        }
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }
}

/// One request to the control API and its answer, independent of HTTP plumbing.
public struct ControlRequest: Sendable {
    public let method: String
    public let path: String
    public let query: [String: String]
    public let body: [UInt8]
    /// Header values by lowercased name (the last of repeated ones).
    public let headers: [String: String]

    package init(method: String, path: String, query: [String: String], body: [UInt8], headers: [String: String] = [:]) {
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.headers = headers
    }
}

public struct ControlResponse: Sendable {
    public let status: Int
    public let body: [UInt8]
    public var contentType = "application/json"
    /// A body written over time (server-sent events): the server writes the head, then hands `stream` the sink.
    package var stream: (@Sendable (ControlStreamSink) -> Void)?
    /// A body that is a file (an artifact), sent from the file with `sendfile`, never read into memory.
    package var file: (path: String, size: UInt64)?
    /// Further headers (the browser view's `Set-Cookie`, its page's security headers).
    package var headers: [(name: String, value: String)] = []

    package static func file(_ path: String, size: UInt64, contentType: String) -> ControlResponse {
        var response = ControlResponse(status: 200, body: [])
        response.contentType = contentType
        response.file = (path, size)
        return response
    }

    /// A `text/event-stream` answer whose events `start` writes to the sink it is given.
    package static func eventStream(_ start: @escaping @Sendable (ControlStreamSink) -> Void) -> ControlResponse {
        var response = ControlResponse(status: 200, body: [])
        response.contentType = "text/event-stream"
        response.stream = start
        return response
    }

    /// One encoder for every response: building one per response was a measurable share of a task's cost.
    private static let encoder = ControlAPI.encoder()

    public static func json(_ value: some Encodable, status: Int = 200) -> ControlResponse {
        do {
            return ControlResponse(status: status, body: Array(try Self.encoder.encode(value)) + [0x0a])
        } catch {
            return .error(500, "cannot encode the response: \(error)")
        }
    }

    public static func error(_ status: Int, _ message: String) -> ControlResponse {
        let body = (try? Self.encoder.encode(ControlAPI.ErrorBody(error: message))) ?? Data()
        return ControlResponse(status: status, body: Array(body) + [0x0a])
    }

    package init(status: Int, body: [UInt8]) {
        self.status = status
        self.body = body
    }
}

/// Where a streamed answer's body goes, bound to one connection. Used only on the event loop that serves the
/// connection (the node's loop), so it needs no lock.
package final class ControlStreamSink: @unchecked Sendable {
    private let writeBytes: ([UInt8]) -> Void
    private let end: () -> Void
    private var closeHandlers: [() -> Void] = []
    package private(set) var isClosed = false

    package init(write: @escaping ([UInt8]) -> Void, end: @escaping () -> Void) {
        self.writeBytes = write
        self.end = end
    }

    package func write(_ bytes: [UInt8]) {
        guard !self.isClosed else { return }
        self.writeBytes(bytes)
    }

    /// Ends the body; the connection closes.
    package func finish() {
        guard !self.isClosed else { return }
        self.end()
        self.closed()
    }

    /// `handler` runs once, when the body ends or the client goes away.
    package func onClose(_ handler: @escaping () -> Void) {
        if self.isClosed { handler() } else { self.closeHandlers.append(handler) }
    }

    /// The connection closed (called by the server).
    package func closed() {
        guard !self.isClosed else { return }
        self.isClosed = true
        let handlers = self.closeHandlers
        self.closeHandlers = []
        for handler in handlers { handler() }
    }
}
