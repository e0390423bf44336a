import Foundation
import MeshControl

/// The CLI's exit statuses (README, "Exit statuses"): a script can tell what happened without reading stderr.
enum ExitStatus: Int32 {
    /// The task failed, or the command did (the message says which).
    case failed = 1
    case timedOut = 2
    case canceled = 3
    /// No node runs on this home folder (or its control socket is left over from one that stopped).
    case notRunning = 4
    /// No live member offers the capability (submit without --wait-for-capability).
    case noCapability = 5
    /// The idempotency key was used before for a different request (nothing was submitted).
    case keyReused = 6
    /// A usage mistake or bad input: an option, JSON that does not parse, a file that cannot be read.
    case badInput = 64
    /// Ctrl-C while waiting for a task (the task goes on).
    case interrupted = 130
}

/// Errors the CLI reports as one sentence on stderr, with the exit status that says what kind of error it is.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    let status: ExitStatus
    init(_ description: String, status: ExitStatus = .failed) {
        self.description = Self.printable(description)
        self.status = status
    }

    /// What reaches the terminal: control characters other than newlines written as escapes (a node's answer may
    /// echo what a peer or a user sent, escape codes included), and at most 2,000 characters of it.
    static func printable(_ text: String) -> String {
        var result = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 && scalar != "\n" || (0x7F...0x9F).contains(scalar.value) {
                result += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                result.unicodeScalars.append(scalar)
            }
        }
        return result.count > 2_000 ? result.prefix(2_000) + "… (\(result.count - 2_000) more characters)" : result
    }
}

/// Runs `body`, turning any error into a `CLIError` with a readable sentence (and "not running" its own status).
func reporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as CLIError {
        throw error
    } catch let error as ControlClient.Error {
        switch error {
        case .notRunning, .staleSocket: throw CLIError(error.description, status: .notRunning)
        case .api(let status, _) where status == 400 || status == 413: throw CLIError(error.description, status: .badInput)
        default: throw CLIError(error.description)
        }
    } catch {
        throw CLIError(String(describing: error))
    }
}

/// Left-aligned columns, two spaces apart.
func renderTable(header: [String], rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n")
}

func printJSON(_ value: some Encodable) throws {
    let data = try ControlAPI.encoder(pretty: isatty(STDOUT_FILENO) == 1).encode(value)
    print(String(decoding: data, as: UTF8.self))
}

extension Date {
    /// Local time of day for tables; the JSON output keeps full ISO 8601 timestamps.
    var timeOfDay: String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
        return formatter.string(from: self)
    }
}

/// A value as one piece of a URL's path or query: anything but letters, digits and `-._~*` percent-encoded, so a
/// filter such as `--topic 'a&topic=b'` stays one value and reaches the node's check intact.
func urlPiece(_ value: String) -> String {
    var allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    allowed.insert(charactersIn: "-._~*")
    return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
}

/// A word as a POSIX shell reads it back: as it is when it is plain, else in single quotes.
func shellQuoted(_ word: String) -> String {
    let plain = !word.isEmpty && word.unicodeScalars.allSatisfy {
        CharacterSet.alphanumerics.contains($0) || "/._-+:=@%,".unicodeScalars.contains($0)
    }
    return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
