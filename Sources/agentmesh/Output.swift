import Foundation
import MeshControl

/// Errors the CLI reports as one sentence on stderr with a non-zero exit.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body`, turning any error into a `CLIError` with a readable sentence.
func reporting<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as CLIError {
        throw error
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
