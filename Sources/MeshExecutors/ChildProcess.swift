import Dispatch
import Foundation
import Synchronization

/// A command started with `posix_spawnp` in its own process group, its stdin, stdout and stderr on pipes.
///
/// Foundation's `Process` is not used: on Linux it has double-closed descriptors when many processes start and end
/// at once, and in a node that also runs SwiftNIO a descriptor closed twice is a crash (or worse, another socket
/// closed). Here every descriptor has exactly one owner and is closed once. Blocking calls (pipe I/O, waiting for
/// the exit) run on GCD threads, never on the Swift concurrency pool.
final class ChildProcess: Sendable {
    struct SpawnError: Error, CustomStringConvertible {
        let description: String
    }

    /// How the process ended.
    enum Termination: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
        /// Someone else reaped it; the status is lost.
        case unknown
    }

    let pid: pid_t
    private let exitState = Mutex<(hasExited: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    private let stdout: Int32
    private let stderr: Int32
    /// The read end of the agent's progress channel, its file descriptor 3.
    private let events: Int32
    /// The write end of the agent's answers channel, its file descriptor 4 (closed once the process ends).
    private let answers: Mutex<Int32>

    /// Starts `command` (looked up in PATH) with `input` on its stdin, and `environment` added to the node's own.
    /// File descriptor 3 is the agent's progress channel: JSON lines written there are progress events.
    init(command: String, arguments: [String], input: [UInt8], environment: [String: String] = [:]) throws(SpawnError) {
        var pipes: [(read: Int32, write: Int32)] = []
        func closeAll() { for pipe in pipes { close(pipe.read); close(pipe.write) } }
        for _ in 0..<5 {
            var fds: [Int32] = [-1, -1]
            guard systemPipe2(&fds, O_CLOEXEC) == 0 else {
                let why = String(cString: strerror(errno))
                closeAll()
                throw SpawnError(description: "cannot create a pipe: \(why)")
            }
            pipes.append((fds[0], fds[1]))
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipes[0].read, 0)
        posix_spawn_file_actions_adddup2(&actions, pipes[1].write, 1)
        posix_spawn_file_actions_adddup2(&actions, pipes[2].write, 2)
        posix_spawn_file_actions_adddup2(&actions, pipes[3].write, 3)
        posix_spawn_file_actions_adddup2(&actions, pipes[4].read, 4)
        // Nothing else crosses over: SwiftNIO accepts sockets without close-on-exec, and a child holding a copy of a
        // peer's socket would keep that connection open after the node closed it.
        _ = spawnCloseFrom(&actions, 5)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, so cancelling kills what it started too; default signal handling, because the
        // node ignores SIGPIPE and an ignored signal would otherwise be inherited.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        let argv = ([command] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var inherited = ProcessInfo.processInfo.environment
        inherited.merge(environment) { _, added in added }
        let envp = inherited.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for variable in envp { free(variable) } }
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, command, &actions, &attributes, argv, envp)
        close(pipes[0].read)
        close(pipes[1].write)
        close(pipes[2].write)
        close(pipes[3].write)
        close(pipes[4].read)
        guard result == 0 else {
            close(pipes[0].write)
            close(pipes[1].read)
            close(pipes[2].read)
            close(pipes[3].read)
            close(pipes[4].write)
            throw SpawnError(description: result == ENOENT
                ? "\(command): command not found" : "cannot start \(command): \(String(cString: strerror(result)))")
        }
        let child = pid
        self.pid = pid
        self.stdout = pipes[1].read
        self.stderr = pipes[2].read
        self.events = pipes[3].read
        self.answers = Mutex(pipes[4].write)
        let stdin = pipes[0].write
        DispatchQueue.global().async {
            Self.writeAll(input, to: stdin)
            close(stdin)
        }
        DispatchQueue.global().async { [self] in
            // Wait without reaping, so the pid cannot be reused while this object may still signal it.
            var info = siginfo_t()
            while waitid(P_PID, id_t(child), &info, WEXITED | WNOWAIT) == -1, errno == EINTR {}
            let waiters = self.exitState.withLock { state in
                state.hasExited = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    var hasExited: Bool { self.exitState.withLock { $0.hasExited } }

    /// Writes one answer, as a line, to the agent's descriptor 4 (nothing once the process has ended).
    func answer(_ line: [UInt8]) {
        // Written under the lock on a GCD thread: the descriptor cannot be closed (and reused) meanwhile, and a pipe
        // the agent does not read blocks that thread, never the node's loop. Once the agent exits, EPIPE ends it.
        DispatchQueue.global().async {
            self.answers.withLock { fd in
                if fd >= 0 { Self.writeAll(line + [0x0A], to: fd) }
            }
        }
    }

    /// Closes the answers channel (the agent reads end of file).
    private func closeAnswers() {
        self.answers.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    /// Returns once the process has exited (it is not reaped until ``reap()``).
    func waitForExit() async {
        await withCheckedContinuation { continuation in
            let exited = self.exitState.withLock { state in
                if !state.hasExited { state.waiters.append(continuation) }
                return state.hasExited
            }
            if exited { continuation.resume() }
        }
    }

    /// Signals the whole process group, unless it has already exited.
    func send(_ signal: Int32) {
        guard !self.hasExited else { return }
        kill(-self.pid, signal)
    }

    /// Collects the exit status. Call once, after ``waitForExit()``.
    func reap() -> Termination {
        self.closeAnswers()
        var status: Int32 = 0
        guard waitpid(self.pid, &status, WNOHANG) == self.pid else { return .unknown }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    /// Everything the process writes to stdout, up to `limit` bytes (nil when it writes more), and the last
    /// `tailLength` bytes of stderr.
    /// Stdout (nil past `limit`), and the last `tailLength` bytes of stderr, all of which also goes to `onStderr` as
    /// it is read.
    /// Lines written to descriptor 3 go to `onEvents` as they are read, the complete lines of each read together.
    func collectOutput(
        limit: Int, tailLength: Int, onStderr: @escaping @Sendable ([UInt8]) -> Void,
        onEvents: @escaping @Sendable ([[UInt8]]) -> Void = { _ in }
    ) async -> (stdout: [UInt8]?, stderrTail: [UInt8]) {
        async let output = Self.readAll(self.stdout, limit: limit)
        async let errors = Self.readAll(self.stderr, limit: nil, keepingLast: tailLength, each: onStderr)
        // One reading thread at a time takes the lock: it only keeps the splitter Sendable.
        let lines = Mutex(LineSplitter())
        let deliver = { @Sendable (events: [[UInt8]]) in if !events.isEmpty { onEvents(events) } }
        async let events = Self.readAll(self.events, limit: 0, each: { chunk in deliver(lines.withLock { $0.lines(in: chunk) }) })
        _ = await events
        deliver(lines.withLock { $0.finish() })
        return await (output, errors ?? [])
    }

    private static func readAll(
        _ fd: Int32, limit: Int?, keepingLast tail: Int? = nil, each: (@Sendable ([UInt8]) -> Void)? = nil
    ) async -> [UInt8]? {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var collected: [UInt8] = []
                var overflowed = false
                var chunk = [UInt8](repeating: 0, count: 65_536)
                while true {
                    let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    if count < 0, errno == EINTR { continue }
                    if count <= 0 { break }
                    each?(Array(chunk[0..<count]))
                    if overflowed { continue }  // keep draining so the writer never blocks
                    collected += chunk[0..<count]
                    if let tail, collected.count > tail { collected.removeFirst(collected.count - tail) }
                    if let limit, collected.count > limit {
                        overflowed = true
                        collected = []
                    }
                }
                close(fd)
                continuation.resume(returning: overflowed ? nil : collected)
            }
        }
    }

    private static func writeAll(_ bytes: [UInt8], to fd: Int32) {
        signal(SIGPIPE, SIG_IGN)  // a process that exits without reading its input must not kill the node
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                return  // EPIPE: the process does not read its input; not an error of ours
            }
            offset += count
        }
    }
}

/// glibc's pipe2, which Swift's Glibc module hides behind _GNU_SOURCE: both ends close-on-exec from the start, so a
/// process spawned by another thread at the same moment never inherits them.
@_silgen_name("pipe2")
private func systemPipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+): the child closes every descriptor from `lowest` up.
@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
private func spawnCloseFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ lowest: Int32) -> Int32

/// Cuts a byte stream into lines (without their newline), giving back the complete lines of each chunk together;
/// a line longer than `maximumLine` is given back cut at that length; blank lines are dropped unless kept (SSE
/// ends an event with one).
struct LineSplitter {
    static let maximumLine = 1024 * 1024
    private var partial: [UInt8] = []
    private let keepsBlankLines: Bool

    init(keepsBlankLines: Bool = false) {
        self.keepsBlankLines = keepsBlankLines
    }

    mutating func lines(in chunk: some Sequence<UInt8>) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        for byte in chunk {
            if byte == 0x0A {
                lines.append(self.partial)
                self.partial = []
            } else if self.partial.count < Self.maximumLine {
                self.partial.append(byte)
            }
        }
        return self.kept(lines)
    }

    /// The last line, if the stream ended without a newline.
    mutating func finish() -> [[UInt8]] {
        defer { self.partial = [] }
        return self.kept(self.partial.isEmpty ? [] : [self.partial])
    }

    private func kept(_ lines: [[UInt8]]) -> [[UInt8]] {
        self.keepsBlankLines ? lines : lines.filter { line in line.contains { $0 != 0x20 && $0 != 0x09 && $0 != 0x0D } }
    }
}
