// swift-tools-version: 6.2
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    // A warning is a mistake to fix, not noise to scroll past.
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "agentmesh",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "agentmesh", targets: ["agentmesh"]),
        .library(name: "MeshTransport", targets: ["MeshTransport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // The only target that touches C: libsodium 1.0.18 as shipped by Debian.
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        // SHA-256 from OpenSSL's libcrypto (Debian's libssl-dev): it uses the CPU's SHA extensions.
        .systemLibrary(name: "CLibCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // Small typed Swift face over libsodium: keys, signatures, AEAD, hashes. Secrets are wiped on drop.
        .target(name: "MeshCrypto", dependencies: ["CSodium", "CLibCrypto"], swiftSettings: strictSettings),
        // Pure state machines and codecs: no sockets, no files, no wall clock.
        .target(
            name: "MeshCore",
            dependencies: ["MeshCrypto"],
            swiftSettings: strictSettings
        ),
        // Frames and messages <-> ByteBuffer (NIOCore only).
        .target(
            name: "MeshWire",
            dependencies: ["MeshCore", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strictSettings
        ),
        // The node's outside contracts for clients: its home folder and the control API's documents and client.
        .target(name: "MeshControl", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strictSettings),
        // What a node keeps on disk: the task store and the per-peer audit logs, each behind a group-commit writer.
        .target(
            name: "MeshStorage",
            dependencies: ["MeshCore", "MeshCrypto", "MeshControl", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: strictSettings
        ),
        // Workflows as pure state machines: definitions, the reference syntax, runs with fan-out and compensation.
        .target(name: "MeshWorkflows", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strictSettings),
        // How a task runs: builtin:echo, exec: (a child process) and http: (a POST).
        .target(
            name: "MeshExecutors",
            dependencies: [
                "MeshCore",
                // http: agents: a bounded client, no redirects, the answer read as a stream.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // The control API load generator of `agentmesh bench` and scripts/bench.
        .target(
            name: "MeshBench",
            dependencies: [
                "MeshControl",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // The node: listener, dialer, sessions, the driver of the state machines, the control API server.
        .target(
            name: "MeshTransport",
            dependencies: [
                "MeshWire", "MeshCore", "MeshCrypto", "MeshControl", "MeshStorage", "MeshExecutors", "MeshWorkflows",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // Webhook deliveries: no redirects, the checked address, a bounded answer.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            // The control API's description, served at GET /openapi.yaml from inside the binary, checked by
            // scripts/check-openapi.
            resources: [.embedInCode("openapi.yaml")],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "agentmesh",
            dependencies: [
                "MeshTransport", "MeshControl", "MeshStorage", "MeshBench", "MeshCore", "MeshCrypto", "MeshWorkflows",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strictSettings
        ),
        // Test support, not shipped: seeded RNG and the fuzz harnesses shared by tests and scripts/fuzz.
        .target(
            name: "MeshTestKit",
            dependencies: [
                "MeshCore", "MeshCrypto", "MeshWire", "MeshControl", "MeshWorkflows",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        // libFuzzer entry point (built by scripts/fuzz with --sanitize fuzzer); otherwise replays inputs from files.
        .executableTarget(name: "mesh-fuzz", dependencies: ["MeshTestKit"], swiftSettings: strictSettings),
        // The membership simulator at scale (scripts/simulate): 1,000 and 10,000 nodes in one process.
        .executableTarget(name: "mesh-sim", dependencies: ["MeshTestKit", "MeshCore"], swiftSettings: strictSettings),
        // The handshake load of scripts/bench (the NATS and Redis anchors use their official clients).
        .executableTarget(
            name: "mesh-baseline", dependencies: ["MeshControl", "MeshBench", "MeshCore", "MeshStorage", "MeshTestKit"], swiftSettings: strictSettings),

        .testTarget(name: "MeshCryptoTests", dependencies: ["MeshCrypto"], swiftSettings: strictSettings),
        .testTarget(name: "MeshWorkflowTests", dependencies: ["MeshWorkflows", "MeshCore"], swiftSettings: strictSettings),
        .testTarget(
            name: "MeshFuzzRegressionTests",
            dependencies: ["MeshTestKit"],
            resources: [.copy("Corpus")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshCoreTests",
            dependencies: ["MeshCore", "MeshCrypto", "MeshTestKit"],
            resources: [.copy("Fixtures")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshWireTests",
            dependencies: ["MeshWire", "MeshCore", "MeshTestKit", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOEmbedded", package: "swift-nio")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshStorageTests",
            dependencies: ["MeshStorage", "MeshControl", "MeshCore", "MeshCrypto", "MeshTestKit"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshExecutorsTests",
            dependencies: ["MeshExecutors", "MeshCore", "MeshCrypto", "MeshTestKit"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshTransportTests",
            dependencies: [
                "MeshTransport", "MeshControl", "MeshStorage", "MeshExecutors", "MeshCore", "MeshCrypto", "MeshWire", "MeshTestKit",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "MeshIntegrationTests",
            dependencies: [
                "MeshTransport", "MeshControl", "MeshStorage", "MeshCore", "MeshCrypto", "MeshWire", "MeshTestKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "agentmeshTests",
            dependencies: [
                "agentmesh", "MeshCore", "MeshCrypto", "MeshTransport", "MeshControl", "MeshStorage", "MeshBench", "MeshTestKit", "MeshWorkflows",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
    ]
)
