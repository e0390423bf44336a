import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A process started by a test with `posix_spawn`, its stdout and stderr going to files.
///
/// Tests used Foundation's `Process`, which on Linux can close a descriptor twice when processes start and end
/// while other threads open sockets: in a test binary that also runs SwiftNIO servers, the second close hit a socket
/// NIO had just accepted and NIO stopped the process (EBADF). Here no descriptor is shared with the test: the
/// child's output goes to files opened in the child, and nothing is read through pipes.
public final class SpawnedProcess: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public let pid: Int32
    public let stdoutPath: String
    public let stderrPath: String
    private let lock = NSLock()
    private var status: Int32?

    /// Starts `executable` with `arguments`; stdin is /dev/null. Output files are removed when the object goes.
    public init(_ executable: String, _ arguments: [String]) throws {
        let base = NSTemporaryDirectory() + "/spawned-\(UUID().uuidString)"
        self.stdoutPath = base + ".out"
        self.stderrPath = base + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, self.stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, self.stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // SwiftNIO accepts sockets without close-on-exec: a child must not keep the test's connections open.
        _ = closeFrom(&actions, 3)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, executable, &actions, nil, argv, environ)
        guard result == 0 else { throw Failure(description: "cannot start \(executable): \(String(cString: strerror(result)))") }
        self.pid = pid
    }

    deinit {
        if self.isRunning { kill(self.pid, SIGKILL) }
        _ = self.waitForExit()
        unlink(self.stdoutPath)
        unlink(self.stderrPath)
    }

    /// Runs to the end and returns the exit status and both outputs.
    public static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = try SpawnedProcess(executable, arguments)
        let status = process.waitForExit()
        return (status, process.stdout, process.stderr)
    }

    public var stdout: String { (try? String(contentsOfFile: self.stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: self.stderrPath, encoding: .utf8)) ?? "" }

    public var isRunning: Bool {
        self.lock.lock()
        defer { self.lock.unlock() }
        if self.status != nil { return false }
        var raw: Int32 = 0
        guard waitpid(self.pid, &raw, WNOHANG) == self.pid else { return true }
        self.status = Self.decode(raw)
        return false
    }

    public func signal(_ signal: Int32) {
        guard self.isRunning else { return }
        kill(self.pid, signal)
    }

    /// Waits for the exit; returns the exit code, or 128 + the signal that ended it.
    @discardableResult
    public func waitForExit() -> Int32 {
        self.lock.lock()
        defer { self.lock.unlock() }
        if let status = self.status { return status }
        var raw: Int32 = 0
        while waitpid(self.pid, &raw, 0) == -1, errno == EINTR {}
        let status = Self.decode(raw)
        self.status = status
        return status
    }

    /// Waits until stdout holds a line containing `text`; returns that line.
    public func waitForLine(containing text: String, timeout: Duration = .seconds(30)) -> String? {
        self.waitForLine(timeout: timeout) { $0.contains(text) }
    }

    /// Waits until stdout holds a whole line that `matches`; returns that line.
    public func waitForLine(timeout: Duration = .seconds(30), where matches: (Substring) -> Bool) -> String? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let output = self.stdout
            let complete = output.hasSuffix("\n") ? output[...] : output[..<(output.lastIndex(of: "\n") ?? output.startIndex)]
            if let line = complete.split(separator: "\n").first(where: matches) { return String(line) }
            if !self.isRunning { return nil }
            usleep(10_000)
        }
        return nil
    }

    private static func decode(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }
}

/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+): the child closes every descriptor from `lowest` up.
@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
private func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ lowest: Int32) -> Int32
