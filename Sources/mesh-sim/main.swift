import Foundation
import MeshCore
import MeshTestKit

// mesh-sim NODES [SEED]: runs the membership state machine for NODES simulated members with memberlist's LAN
// timers (1 s probe interval, so one round is one second) and prints how fast a join and a death spread, and how
// many live members 1 % and 5 % message loss get declared dead. Deterministic: the same arguments print the same
// numbers.

let arguments = CommandLine.arguments.dropFirst()
guard let nodes = arguments.first.flatMap(Int.init), nodes >= 3 else {
    FileHandle.standardError.write(Data("usage: mesh-sim NODES [SEED] [--json]\n".utf8))
    exit(2)
}
let seed = arguments.dropFirst().first.flatMap(UInt64.init) ?? 1
let json = arguments.contains("--json")
let settings = MembershipSettings.lan
let round = settings.probeInterval

func configuration(loss: Double = 0) -> MembershipSimulation.Configuration {
    var configuration = MembershipSimulation.Configuration(nodeCount: nodes, seed: seed, settings: settings)
    configuration.loss = loss
    configuration.tick = .milliseconds(50)
    return configuration
}

func rounds(_ duration: Duration) -> Double {
    (Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
        / (Double(round.components.seconds) + Double(round.components.attoseconds) / 1e18)
}

func log(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

let started = Date()
var results: [String: Double] = ["nodes": Double(nodes), "seed": Double(seed)]

// A join through one seed: rounds until every member lists the newcomer as alive.
do {
    var mesh = MembershipSimulation(configuration(), recordEvents: false)
    mesh.run(for: .seconds(2))
    let joinedAt = mesh.now
    let joiner = mesh.join(via: 0)
    let done = mesh.run(until: joinedAt + .seconds(600)) { $0.fraction(seeing: joiner) { $0?.status == .alive } == 1 }
    results["join_rounds"] = done ? rounds(mesh.now - joinedAt) : .infinity
    results["join_messages_per_node_per_round"] = Double(mesh.messagesSent) / Double(nodes) / rounds(mesh.now)
    log("join: \(results["join_rounds"]!) rounds (\(Date().timeIntervalSince(started)) s so far)")
}

// A crash: rounds until the first suspicion, and until every live member lists it as dead.
do {
    var mesh = MembershipSimulation(configuration(), recordEvents: false)
    mesh.run(for: .seconds(2))
    let victim = nodes / 2
    let crashedAt = mesh.now
    mesh.crash(victim)
    let victimID = mesh.nodeID(victim)
    let done = mesh.run(until: crashedAt + .seconds(600)) { $0.fraction(seeing: victim) { $0?.status == .dead } == 1 }
    results["death_first_suspicion_rounds"] = mesh.firstSuspicion[victimID].map { rounds($0 - crashedAt) } ?? .infinity
    results["death_rounds"] = done ? rounds(mesh.now - crashedAt) : .infinity
    log("death: \(results["death_rounds"]!) rounds (\(Date().timeIntervalSince(started)) s so far)")
}

// Loss: a healthy mesh for 60 rounds; every live member declared dead by anyone is a false positive.
for loss in [0.01, 0.05] {
    var mesh = MembershipSimulation(configuration(loss: loss), recordEvents: false)
    mesh.run(for: .seconds(60))
    let key = "false_deaths_loss_\(Int(loss * 100))pct"
    results[key] = Double(mesh.liveNodesDeclaredDead().count)
    log("\(key): \(results[key]!) (\(Date().timeIntervalSince(started)) s so far)")
}
results["wall_seconds"] = Date().timeIntervalSince(started)

if json {
    let data = try JSONSerialization.data(withJSONObject: results, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
} else {
    print("nodes \(nodes), seed \(seed), LAN timers (1 round = 1 probe interval = 1 s)")
    for key in results.keys.sorted() { print("  \(key): \(results[key]!)") }
}
