import Foundation
import Logging

/// One line per record on stderr: `2026-11-24T23:03:14Z info  peer authenticated peer=beta 247a… trust=trusted`.
/// The message comes first so a log reads as sentences; metadata keys are sorted so lines diff cleanly.
struct LineLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
        var line = "\(Date().formatted(.iso8601)) \(event.level.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0))"
            + Self.escaped("\(event.message)")
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            let text = Self.escaped("\(value)")
            line += text.contains(" ") || text.contains("\"") ? " \(key)=\"\(text.replacingOccurrences(of: "\"", with: "\\\""))\"" : " \(key)=\(text)"
        }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// Peers choose some of what is logged (a listen address, a close reason, a name): a line break or another
    /// control character in it would forge lines, so every one is written as an escape.
    static func escaped(_ text: String) -> String {
        func isControl(_ scalar: Unicode.Scalar) -> Bool {
            scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
        }
        guard text.unicodeScalars.contains(where: { isControl($0) || $0 == "\\" }) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case "\\": result += "\\\\"
            case _ where isControl(scalar):
                result += "\\u{\(String(scalar.value, radix: 16))}"
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
