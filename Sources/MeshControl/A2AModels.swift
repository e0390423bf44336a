import Foundation

/// A2A 1.0 over JSON-RPC 2.0, as typed values: the request envelope with its params decoded by method, and the
/// objects the node answers with (proto3 JSON names, optional fields left out when absent).
public enum A2A {
    /// A JSON-RPC 2.0 id: a string, a number or null (JSON-RPC 2.0 §4).
    public enum RequestID: Codable, Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case number(Double)
        case null

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .null
            } else if let string = try? container.decode(String.self) {
                self = .string(string)
            } else if (try? container.decode(Bool.self)) != nil {
                throw DecodingError.typeMismatch(Self.self, .init(codingPath: decoder.codingPath, debugDescription: "a boolean"))
            } else if let integer = try? container.decode(Int64.self) {
                self = .integer(integer)
            } else {
                self = .number(try container.decode(Double.self))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .string(let string): try container.encode(string)
            case .integer(let integer): try container.encode(integer)
            case .number(let number): try container.encode(number)
            case .null: try container.encodeNil()
            }
        }
    }

    /// The methods this node serves, with their params.
    public enum Call: Sendable {
        case sendMessage(SendMessageRequest, streaming: Bool)
        case getTask(TaskQuery)
        case cancelTask(TaskQuery)
        case subscribeToTask(TaskQuery)
        case listTasks(ListTasksRequest)
        /// The push-notification config methods (the card says pushNotifications: false).
        case pushNotificationConfig
        case unknown(String)
    }

    /// One JSON-RPC 2.0 request. Decoding never throws for what JSON-RPC answers with an error of its own: an
    /// envelope that is not a 2.0 request is ``invalid`` (-32600), params the method cannot take ``badParams``
    /// (-32602).
    public struct Request: Decodable, Sendable {
        /// nil for a notification (no id at all), which gets no answer.
        public let id: RequestID?
        public let call: Call
        public let invalid: String?
        public let badParams: String?

        private enum Key: String, CodingKey { case jsonrpc, id, method, params }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Key.self)
            var id: RequestID?
            var invalid: String?
            if container.contains(.id) {
                do { id = try container.decode(RequestID.self, forKey: .id) } catch { invalid = "id must be a string, a number or null" }
            }
            let method = try? container.decodeIfPresent(String.self, forKey: .method)
            if (try? container.decodeIfPresent(String.self, forKey: .jsonrpc)) != "2.0" {
                invalid = "jsonrpc must be \"2.0\""
            } else if method == nil, invalid == nil {
                invalid = "method must be a string"
            }
            self.id = id
            self.invalid = invalid
            // Params must be an object when given (JSON-RPC 2.0 §4.2); each method then decodes its own.
            var badParams: String?
            let given = container.contains(.params)
            if given, (try? container.nestedContainer(keyedBy: AnyKey.self, forKey: .params)) == nil {
                badParams = "params must be an object"
            }
            func params<Params: Decodable>(_ type: Params.Type) -> Params? {
                guard badParams == nil else { return nil }
                do {
                    return given
                        ? try container.decode(Params.self, forKey: .params)
                        : try JSONDecoder().decode(Params.self, from: Data("{}".utf8))
                } catch let error as DecodingError {
                    badParams = Self.describe(error)
                } catch {
                    // Foundation's decoder throws its own error, without a path, for 2.5 or 1e30 where an Int goes.
                    let text = "\(error)"
                    if text.contains("numberIsNotRepresentable"), let start = text.firstIndex(of: "\""), let end = text.lastIndex(of: "\""), start < end {
                        badParams = "params hold \(text[text.index(after: start)..<end].prefix(32)) where a whole number goes"
                    } else {
                        badParams = "params cannot be read: \(text.prefix(200))"
                    }
                }
                return nil
            }
            let call: Call
            switch method ?? "" {
            case "SendMessage", "SendStreamingMessage":
                let request = params(SendMessageRequest.self)
                call = request.map { .sendMessage($0, streaming: method == "SendStreamingMessage") } ?? .unknown(method ?? "")
            case "GetTask", "CancelTask", "SubscribeToTask":
                let query = params(TaskQuery.self)
                switch (method, query) {
                case ("GetTask", let query?): call = .getTask(query)
                case ("CancelTask", let query?): call = .cancelTask(query)
                case (_, let query?): call = .subscribeToTask(query)
                default: call = .unknown(method ?? "")
                }
            case "ListTasks":
                let request = params(ListTasksRequest.self)
                call = request.map { .listTasks($0) } ?? .unknown(method ?? "")
            case "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig", "ListTaskPushNotificationConfigs",
                "DeleteTaskPushNotificationConfig":
                call = .pushNotificationConfig
            default:
                call = .unknown(method ?? "")
            }
            self.call = call
            self.badParams = badParams
        }

        private struct AnyKey: CodingKey {
            let stringValue: String
            let intValue: Int? = nil
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { return nil }
        }

        /// "params.message.parts must be an array", from what the decoder says, in the client's terms.
        static func describe(_ error: DecodingError) -> String {
            func path(_ context: DecodingError.Context) -> String {
                let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
                return ((keys.first == "params" ? [] : ["params"]) + keys).joined(separator: ".").replacingOccurrences(of: ".[", with: "[")
            }
            switch error {
            case .keyNotFound(let key, let context):
                return "\(path(context)).\(key.stringValue) is required"
            case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
                return "\(path(context)) must be \(Self.name(of: type))"
            case .dataCorrupted(let context):
                // The decoder's own words name Swift types; say what the field takes instead.
                switch context.codingPath.last?.stringValue {
                case "role"?: return "\(path(context)) must be one of \(Role.allCases.map(\.rawValue).joined(separator: ", "))"
                case "status"?: return "\(path(context)) must be one of \(TaskState.allCases.map(\.rawValue).joined(separator: ", "))"
                default: break
                }
                if context.debugDescription.contains("Representable") || context.debugDescription.contains("fit") {
                    return "\(path(context)) must be a whole number"
                }
                return "\(path(context)) is not valid JSON of its type"
            @unknown default:
                return "\(error)"
            }
        }

        private static func name(of type: Any.Type) -> String {
            switch type {
            case is String.Type: return "a string"
            case is Bool.Type: return "true or false"
            case is Int.Type, is Int64.Type: return "a whole number"
            case is Double.Type: return "a number"
            case is [Any].Type: return "an array"
            default: return "an object"
            }
        }
    }

    // MARK: - Requests

    public struct SendMessageRequest: Codable, Sendable {
        public let message: Message
        public let configuration: SendMessageConfiguration?
        public let metadata: [String: ControlAPI.JSONValue]?
    }

    public struct SendMessageConfiguration: Codable, Sendable {
        public let acceptedOutputModes: [String]?
        public let historyLength: Int?
        /// Answer with the task as soon as it is accepted (stored), instead of when it ends or asks a question.
        public let returnImmediately: Bool?
    }

    /// `GetTask`, `CancelTask` and `SubscribeToTask`: a task by id.
    public struct TaskQuery: Codable, Sendable {
        public let id: String
        public let historyLength: Int?
    }

    public struct ListTasksRequest: Codable, Sendable {
        public var contextId: String?
        public var status: TaskState?
        public var pageSize: Int?
        public var pageToken: String?
        public var historyLength: Int?
        public var statusTimestampAfter: String?
        public var includeArtifacts: Bool?

        public init() {}
    }

    // MARK: - Objects

    public enum Role: String, Codable, Sendable, CaseIterable {
        case user = "ROLE_USER"
        case agent = "ROLE_AGENT"
        case unspecified = "ROLE_UNSPECIFIED"
    }

    public enum TaskState: String, Codable, Sendable, CaseIterable {
        case submitted = "TASK_STATE_SUBMITTED"
        case working = "TASK_STATE_WORKING"
        case inputRequired = "TASK_STATE_INPUT_REQUIRED"
        case completed = "TASK_STATE_COMPLETED"
        case failed = "TASK_STATE_FAILED"
        case canceled = "TASK_STATE_CANCELED"
        case rejected = "TASK_STATE_REJECTED"
        case authRequired = "TASK_STATE_AUTH_REQUIRED"
    }

    /// One part of a message or an artifact: text, structured data, or a file (inline bytes or a URL).
    public struct Part: Codable, Sendable, Equatable {
        public var text: String?
        public var data: ControlAPI.JSONValue?
        public var raw: String?
        public var url: String?
        public var filename: String?
        public var mediaType: String?
        public var metadata: [String: ControlAPI.JSONValue]?

        public init(text: String) { self.text = text }
        public init(data: ControlAPI.JSONValue, mediaType: String? = nil) {
            self.data = data
            self.mediaType = mediaType
        }
    }

    public struct Message: Codable, Sendable, Equatable {
        public let messageId: String
        public let role: Role
        public let parts: [Part]
        public var contextId: String?
        public var taskId: String?
        public var metadata: [String: ControlAPI.JSONValue]?

        public init(messageId: String, role: Role, parts: [Part], contextId: String? = nil, taskId: String? = nil) {
            self.messageId = messageId
            self.role = role
            self.parts = parts
            self.contextId = contextId
            self.taskId = taskId
        }
    }

    public struct TaskStatus: Codable, Sendable, Equatable {
        public let state: TaskState
        public var message: Message?
        /// When the task entered this state (RFC 3339).
        public let timestamp: String

        public init(state: TaskState, message: Message?, timestamp: String) {
            self.state = state
            self.message = message
            self.timestamp = timestamp
        }
    }

    public struct Artifact: Codable, Sendable, Equatable {
        public let artifactId: String
        public let name: String?
        public let parts: [Part]

        public init(artifactId: String, name: String?, parts: [Part]) {
            self.artifactId = artifactId
            self.name = name
            self.parts = parts
        }
    }

    public struct Task: Codable, Sendable, Equatable {
        public let id: String
        public let contextId: String
        public let status: TaskStatus
        public var artifacts: [Artifact]?
        public var history: [Message]

        public init(id: String, contextId: String, status: TaskStatus, artifacts: [Artifact]?, history: [Message]) {
            self.id = id
            self.contextId = contextId
            self.status = status
            self.artifacts = artifacts
            self.history = history
        }
    }

    public struct TaskStatusUpdateEvent: Codable, Sendable {
        public let taskId: String
        public let contextId: String
        public let status: TaskStatus

        public init(taskId: String, contextId: String, status: TaskStatus) {
            self.taskId = taskId
            self.contextId = contextId
            self.status = status
        }
    }

    public struct TaskArtifactUpdateEvent: Codable, Sendable {
        public let taskId: String
        public let contextId: String
        public let artifact: Artifact
        public let lastChunk: Bool

        public init(taskId: String, contextId: String, artifact: Artifact, lastChunk: Bool) {
            self.taskId = taskId
            self.contextId = contextId
            self.artifact = artifact
            self.lastChunk = lastChunk
        }
    }

    /// One answer of `SendMessage` or one event of a stream: exactly one field is set.
    public struct StreamResponse: Codable, Sendable {
        public var task: Task?
        public var statusUpdate: TaskStatusUpdateEvent?
        public var artifactUpdate: TaskArtifactUpdateEvent?

        public init(task: Task) { self.task = task }
        public init(statusUpdate: TaskStatusUpdateEvent) { self.statusUpdate = statusUpdate }
        public init(artifactUpdate: TaskArtifactUpdateEvent) { self.artifactUpdate = artifactUpdate }
    }

    public struct ListTasksResponse: Codable, Sendable {
        public let tasks: [Task]
        public let nextPageToken: String
        public let pageSize: Int
        public let totalSize: Int

        public init(tasks: [Task], nextPageToken: String, pageSize: Int, totalSize: Int) {
            self.tasks = tasks
            self.nextPageToken = nextPageToken
            self.pageSize = pageSize
            self.totalSize = totalSize
        }
    }

    // MARK: - The agent card

    public struct AgentCard: Codable, Sendable {
        public let name: String
        public let description: String
        public let version: String
        public let supportedInterfaces: [AgentInterface]
        public var capabilities = AgentCapabilities()
        /// The control token as a bearer token (`DIR/control.token`).
        public var securitySchemes: [String: ControlAPI.JSONValue] = [
            "controlToken": ControlAPI.JSONValue(["httpAuthSecurityScheme": [
                "scheme": "bearer", "description": "The token in the node's DIR/control.token."]]),
        ]
        public var securityRequirements: [ControlAPI.JSONValue] = [
            ControlAPI.JSONValue(["schemes": ["controlToken": ["list": [String]()]]]),
        ]
        public var defaultInputModes = ["application/json", "text/plain"]
        public var defaultOutputModes = ["application/json"]
        public let skills: [AgentSkill]

        public init(name: String, description: String, version: String, supportedInterfaces: [AgentInterface], skills: [AgentSkill]) {
            self.name = name
            self.description = description
            self.version = version
            self.supportedInterfaces = supportedInterfaces
            self.skills = skills
        }
    }

    public struct AgentInterface: Codable, Sendable {
        public let url: String
        public let protocolBinding: String
        public let protocolVersion: String

        public init(url: String, protocolBinding: String, protocolVersion: String) {
            self.url = url
            self.protocolBinding = protocolBinding
            self.protocolVersion = protocolVersion
        }
    }

    public struct AgentCapabilities: Codable, Sendable {
        public var streaming = true
        public var pushNotifications = false
    }

    public struct AgentSkill: Codable, Sendable {
        public let id: String
        public let name: String
        public let description: String
        public var tags = ["agentmesh"]
        public var inputModes = ["application/json", "text/plain"]
        public var outputModes = ["application/json"]

        public init(id: String, name: String, description: String) {
            self.id = id
            self.name = name
            self.description = description
        }
    }

    // MARK: - Envelopes

    public struct Response<Result: Encodable & Sendable>: Encodable, Sendable {
        public let jsonrpc = "2.0"
        public let id: RequestID
        public let result: Result

        public init(id: RequestID, result: Result) {
            self.id = id
            self.result = result
        }
    }

    public struct ErrorResponse: Encodable, Sendable {
        public struct Detail: Encodable, Sendable {
            public let code: Int
            public let message: String
        }

        public let jsonrpc = "2.0"
        public let id: RequestID
        public let error: Detail

        public init(id: RequestID, code: Int, message: String) {
            self.id = id
            self.error = Detail(code: code, message: message)
        }
    }

    /// Compact JSON with sorted keys, as every A2A answer is written.
    public static func encoded(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array((try? encoder.encode(value)) ?? Data("{}".utf8))
    }
}
