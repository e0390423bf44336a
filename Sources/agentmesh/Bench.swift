import ArgumentParser
import Foundation
import MeshBench
import MeshControl

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load a running node: submit tasks over persistent control connections and report requests/s and latency.",
        discussion: """
            Each request submits one task (a JSON string of --payload bytes) with ?wait=, so it ends when the task has
            run on a member offering the capability and its result is back. --concurrency connections each keep one
            request in flight. Latency percentiles are exact, from every request's sample.
            """)

    @OptionGroup var options: HomeOptions

    @Option(help: "The capability every task asks for (builtin:echo makes the mesh itself the cost).")
    var capability: String

    @Option(help: "Measured requests.")
    var requests = 10_000

    @Option(help: "Requests in flight at once (one per connection).")
    var concurrency = 1

    @Option(help: "Bytes of input per task.")
    var payload = 100

    @Option(help: "Stop after this many seconds even if requests remain.")
    var duration: Double?

    @Option(help: "Unmeasured requests first.")
    var warmup = 200

    @Flag(help: "One JSON document instead of the summary.")
    var json = false

    func validate() throws {
        guard self.requests >= 1 else { throw ValidationError("--requests must be at least 1") }
        guard (1...4096).contains(self.concurrency) else { throw ValidationError("--concurrency must be 1 to 4096") }
        guard (0...(1 << 20)).contains(self.payload) else { throw ValidationError("--payload must be 0 to 1048576 bytes") }
        guard self.warmup >= 0 else { throw ValidationError("--warmup must be 0 or more") }
        if let duration { guard duration > 0 else { throw ValidationError("--duration must be positive") } }
    }

    func run() async throws {
        let home = self.options.nodeHome
        // Fail with the usual sentence when no node runs here, and at once when nobody could run the tasks.
        let members = try reporting {
            try ControlClient(socketPath: home.controlSocketPath).get("/v1/members", as: ControlAPI.Members.self)
        }.members.filter { $0.status == "alive" }
        guard members.contains(where: { $0.capabilities.contains { $0.name == self.capability } }) else {
            let offered = Set(members.flatMap { $0.capabilities.map(\.name) }).sorted()
            throw CLIError(
                "no live member offers \(self.capability)"
                    + (offered.isEmpty ? " (no member offers any capability now)" : "; offered now: \(offered.joined(separator: ", "))"),
                status: .noCapability)
        }
        let load = ControlLoad(.init(
            socketPath: home.controlSocketPath, capability: self.capability, requests: self.requests,
            concurrency: self.concurrency, payload: self.payload, duration: self.duration.map { .milliseconds(Int64($0 * 1000)) },
            warmup: self.warmup))
        let progress = ControlLoad.Progress()
        let reporter = Task {
            guard isatty(STDERR_FILENO) == 1 else { return }  // a progress line only for a person watching
            let started = ContinuousClock.now
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let seconds = (ContinuousClock.now - started).components.seconds
                FileHandle.standardError.write(Data(
                    "\r  \(seconds) s  \(progress.done)/\(self.requests) done  \(progress.failures) failed   ".utf8))
            }
        }
        let report: ControlLoad.Report
        do {
            report = try await load.run(progress: progress)
        } catch {
            reporter.cancel()
            throw CLIError("the benchmark stopped: \(error)")
        }
        reporter.cancel()
        if isatty(STDERR_FILENO) == 1 { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        if self.json {
            try printJSON(report)
        } else {
            let latency = report.latencyMicroseconds
            print("""
                \(report.requests) tasks of \(report.payloadBytes) bytes, \(report.concurrency) in flight, in \(String(format: "%.2f", report.seconds)) s: \(String(format: "%.0f", report.requestsPerSecond)) tasks/s
                latency (µs): p50 \(Int(latency.p50))  p90 \(Int(latency.p90))  p99 \(Int(latency.p99))  max \(Int(latency.max))  mean \(Int(latency.mean))
                """)
        }
        if report.failures > 0 {
            throw CLIError("\(report.failures) of \(report.requests) tasks failed; first: \(report.firstFailure ?? "?")")
        }
    }
}
