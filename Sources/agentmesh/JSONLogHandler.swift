import Foundation
import Logging

/// `run --log-format json`: one JSON object a line on stderr, `{"time", "level", "message", …metadata}`, for log
/// collectors. Keys are sorted; peers' strings are JSON-escaped, so none can forge a line.
struct JSONLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: Any] = [:]
        for (key, value) in self.metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            object[key] = Self.plain(value)
        }
        object["time"] = Date().formatted(.iso8601)
        object["level"] = event.level.rawValue
        object["message"] = "\(event.message)"
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data(#"{"message":"a log record could not be written as JSON"}"#.utf8)
        FileHandle.standardError.write(data + Data([0x0A]))
    }

    private static func plain(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return "\(convertible)"
        case .array(let values): return values.map(Self.plain)
        case .dictionary(let fields): return fields.mapValues(Self.plain)
        }
    }
}
