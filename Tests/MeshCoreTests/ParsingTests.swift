import Foundation
import MeshCore
import MeshCrypto
import Testing

@Suite struct IdentityLineTests {
    @Test func renderedLineParsesBack() throws {
        let identity = NodeIdentity(name: "worker-1").publicIdentity
        let line = IdentityLine.render(identity)
        #expect(line.hasPrefix("agentmesh-id/1 name=worker-1 id=\(identity.nodeID) "))
        #expect(try IdentityLine.parse(line) == identity)
        #expect(try IdentityLine.parse("  " + line + "\n") == identity)
    }

    @Test func malformedLinesAreRefusedWithAReason() throws {
        let identity = NodeIdentity(name: "w").publicIdentity
        let line = IdentityLine.render(identity)
        #expect(throws: IdentityLine.ParseError.notAnIdentityLine) { try IdentityLine.parse("hello world") }
        #expect(throws: IdentityLine.ParseError.notAnIdentityLine) { try IdentityLine.parse("") }
        #expect(throws: IdentityLine.ParseError.missingField("x25519")) {
            try IdentityLine.parse(line.components(separatedBy: " x25519=")[0])
        }
        #expect(throws: IdentityLine.ParseError.invalidField("ed25519")) {
            try IdentityLine.parse(line.replacingOccurrences(of: "ed25519=", with: "ed25519=zz"))
        }
        #expect(throws: IdentityLine.ParseError.invalidField("name")) {
            try IdentityLine.parse(line.replacingOccurrences(of: "name=w", with: "name=a/b"))
        }
        // One changed digit of the key: the id no longer matches.
        let other = NodeIdentity(name: "w").publicIdentity
        let spliced = line.replacingOccurrences(
            of: Hex.encode(identity.identityKey.bytes), with: Hex.encode(other.identityKey.bytes))
        #expect(throws: IdentityLine.ParseError.idDoesNotMatchKey) { try IdentityLine.parse(spliced) }
    }
}

@Suite struct PeerDescriptorTests {
    @Test func renderedDescriptorParsesBack() throws {
        let descriptor = PeerDescriptor(identity: NodeIdentity(name: "b").publicIdentity)
        #expect(try PeerDescriptor(parsing: descriptor.render()) == descriptor)
        #expect(descriptor.fileName == "\(descriptor.identity.nodeID).toml")
    }

    @Test func brokenDescriptorsNameWhatIsWrong() throws {
        let good = PeerDescriptor(identity: NodeIdentity(name: "b").publicIdentity).render()
        #expect(throws: PeerDescriptor.ParseError.missingKey("x25519")) {
            try PeerDescriptor(parsing: good.split(separator: "\n").filter { !$0.hasPrefix("x25519") }.joined(separator: "\n"))
        }
        #expect(throws: PeerDescriptor.ParseError.self) { try PeerDescriptor(parsing: "name = \"b\"\nname = \"c\"\n") }
        #expect(throws: PeerDescriptor.ParseError.self) { try PeerDescriptor(parsing: "\u{0}\u{1}garbage") }
    }
}

@Suite struct TOMLSubsetTests {
    @Test func parsesTheSupportedSubset() throws {
        let document = try TOMLDocument(parsing: """
            # comment
            name = "a \\"quoted\\" name" # trailing comment
            count = 1_000
            open = true
            joins = ["127.0.0.1:1", "127.0.0.1:2"]

            [limits]
            offers = "20/s:20"
            """)
        #expect(document["", "name"] == .string("a \"quoted\" name"))
        #expect(document["", "count"] == .integer(1000))
        #expect(document["", "open"] == .boolean(true))
        #expect(document["", "joins"] == .array([.string("127.0.0.1:1"), .string("127.0.0.1:2")]))
        #expect(document["limits", "offers"] == .string("20/s:20"))
    }

    @Test(arguments: [
        ("name = ", 1), ("x = \"open", 1), ("\n[t\n", 2), ("a = 1\na = 2", 2), ("= 3", 1), ("a = 1 2", 1),
        ("a = yes", 1), ("a = [[1]]", 1), ("a = \"\\q\"", 1),
    ])
    func reportsTheLineOfAnError(text: String, line: Int) {
        #expect {
            try TOMLDocument(parsing: text)
        } throws: { error in
            (error as? TOMLDocument.ParseError)?.line == line
        }
    }

    @Test func quotedStringsRoundTrip() throws {
        for text in ["plain", "with \"quotes\"", "back\\slash", "tab\tnew\nline", "\u{1}ctl", "ünïcödé"] {
            let document = try TOMLDocument(parsing: "v = \(TOMLDocument.quoted(text))")
            #expect(document["", "v"] == .string(text))
        }
    }
}

@Suite struct ReplayCacheTests {
    @Test func remembersUpToItsCapacityThenForgetsTheOldest() {
        var cache = ReplayCache(capacity: 3)
        let inserted = [[1], [1], [2], [3], [4], [1], [3]].map { cache.insert($0) }  // [4] evicts [1]
        #expect(inserted == [true, false, true, true, true, true, false])
        #expect(cache.count == 3)
    }
}

@Suite struct CapabilitySpecTests {
    @Test func capabilitiesParseWithTheirConcurrency() throws {
        let echo = try CapabilitySpec(parsing: "echo=builtin:echo")
        #expect(echo.name == "echo" && echo.executor == .builtinEcho && echo.concurrency == 4)
        let wide = try CapabilitySpec(parsing: "echo*64=builtin:echo")
        #expect(wide.name == "echo" && wide.concurrency == 64)
        let worker = try CapabilitySpec(parsing: "summarize*2=exec:python3 worker.py --fast")
        #expect(worker.executor == .exec(command: "python3", arguments: ["worker.py", "--fast"]) && worker.concurrency == 2)
        #expect(try CapabilitySpec(parsing: "agent=http:http://127.0.0.1:8080/run").executor == .http(url: "http://127.0.0.1:8080/run"))
        for url in ["https://agents.example.com/run?x=1", "http://[::1]:8080/", "http://user@h:1/", "http://h"] {
            #expect(try CapabilitySpec(parsing: "agent=http:" + url).executor == .http(url: url))
        }
    }

    /// Issue 13: `exec:sh -c 'cat; echo'` was split on every space.
    @Test func execCommandLinesSplitAsAShellWouldAndRoundTrip() throws {
        let spec = try CapabilitySpec(parsing: #"x=exec:sh -c 'cat; echo "hi"' "two words" a\ b "q\"uote" ''"#)
        #expect(spec.executor == .exec(command: "sh", arguments: ["-c", #"cat; echo "hi""#, "two words", "a b", #"q"uote"#, ""]))
        let again = try CapabilitySpec(parsing: "x=\(spec.executor)")
        #expect(again.executor == spec.executor, "the description parses back: \(spec.executor)")
        let apostrophe = CapabilitySpec.Executor.exec(command: "echo", arguments: ["it's"])
        #expect(try CapabilitySpec(parsing: "x=\(apostrophe)").executor == apostrophe)
    }

    @Test(arguments: ["echo", "echo*0=builtin:echo", "echo*=builtin:echo", "echo*x=builtin:echo", "echo*70000=builtin:echo",
                      "bad name=builtin:echo", "echo=exec:", "echo=http:ftp://x", "a=http:http://127.0.0.1:/run", "a=http:http://:8080/run",
                      "a=http:http://h:99999/", "a=http:http://h:8o/", "a=http:https://[::1/x", "a=http:http:///run", "echo=magic:x", "echo=exec:sh -c 'open",
                      "echo=exec:sh -c \"open", "echo=exec:trailing\\", "echo=exec:''"])
    func badCapabilitiesSayWhy(text: String) {
        #expect(throws: CapabilitySpec.ParseError.self) { try CapabilitySpec(parsing: text) }
    }
}
