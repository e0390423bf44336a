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
            + "\(event.message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            let text = "\(value)"
            line += text.contains(" ") ? " \(key)=\"\(text)\"" : " \(key)=\(text)"
        }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
