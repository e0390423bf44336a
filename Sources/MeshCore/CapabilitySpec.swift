/// `--capability NAME=EXECUTOR`: a capability this node offers and how it runs it.
public struct CapabilitySpec: Sendable, Equatable, CustomStringConvertible {
    /// How many tasks of one capability run at once unless the user says otherwise.
    public static let defaultConcurrency: UInt16 = 4

    public enum Executor: Sendable, Equatable, CustomStringConvertible {
        /// Returns its input.
        case builtinEcho
        /// A test agent that streams: `{"events": N, "interval_ms": M}` emits N progress events M ms apart.
        case builtinStream
        /// Runs a command with the task input as JSON on stdin; stdout is the result.
        case exec(command: String, arguments: [String])
        /// POSTs the task as JSON; a 2xx JSON body is the result.
        case http(url: String)

        public var description: String {
            switch self {
            case .builtinEcho: return "builtin:echo"
            case .builtinStream: return "builtin:stream"
            case .exec(let command, let arguments): return "exec:" + ([command] + arguments).map(Self.quoted).joined(separator: " ")
            case .http(let url): return "http:" + url
            }
        }

        /// A word as the parser reads it back: bare when it is plain, otherwise in single quotes.
        private static func quoted(_ word: String) -> String {
            let plain = !word.isEmpty && word.allSatisfy { $0.isLetter || $0.isNumber || "_./:=@%+,-".contains($0) }
            return plain ? word : "'" + word.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
        }
    }

    public let name: String
    public let executor: Executor
    public let concurrency: UInt16

    public init(name: String, executor: Executor, concurrency: UInt16 = defaultConcurrency) {
        self.name = name
        self.executor = executor
        self.concurrency = concurrency
    }

    public var capability: Capability { Capability(name: self.name, capacity: self.concurrency) }
    public var description: String { "\(self.name)=\(self.executor)" }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Parses `NAME=builtin:echo`, `NAME=exec:COMMAND ARGS…` (split as a shell would, quotes kept together) or `NAME=http:URL`; `NAME*N=…` runs
    /// up to N at once (default 4).
    public init(parsing text: String) throws(ParseError) {
        guard let equals = text.firstIndex(of: "=") else {
            throw ParseError(description: "'\(text)' is not NAME=EXECUTOR (for example echo=builtin:echo)")
        }
        var name = String(text[..<equals])
        var concurrency = Self.defaultConcurrency
        if let star = name.firstIndex(of: "*") {
            guard let count = UInt16(name[name.index(after: star)...]), count >= 1 else {
                throw ParseError(description: "'\(name)': after '*' comes how many may run at once, 1 to 65535")
            }
            concurrency = count
            name = String(name[..<star])
        }
        let executor = String(text[text.index(after: equals)...])
        guard Capability.isValidName(name) else {
            throw ParseError(description: "capability name '\(name)' must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        }
        try self.init(name: name, executor: Self.executor(executor, in: text), concurrency: concurrency)
    }

    /// Splits a command line as a POSIX shell does, without expanding anything: spaces separate words, '…' keeps
    /// everything literally, "…" keeps spaces (and \" \\ inside), \ escapes the next character.
    static func words(_ line: String, in text: String) throws(ParseError) -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for character in line {
            if escaped {
                word.append(character)
                escaped = false
            } else if let open = quote {
                if character == open {
                    quote = nil
                } else if character == "\\", open == "\"" {
                    escaped = true
                } else {
                    word.append(character)
                }
            } else if character == "'" || character == "\"" {
                quote = character
                inWord = true
            } else if character == "\\" {
                escaped = true
                inWord = true
            } else if character == " " || character == "\t" {
                if inWord { words.append(word) }
                word = ""
                inWord = false
            } else {
                word.append(character)
                inWord = true
            }
        }
        guard quote == nil, !escaped else {
            throw ParseError(description: "'\(text)': an unclosed quote or a trailing backslash in the command")
        }
        if inWord { words.append(word) }
        return words
    }

    private static func executor(_ executor: String, in text: String) throws(ParseError) -> Executor {
        if executor == "builtin:echo" {
            return .builtinEcho
        } else if executor == "builtin:stream" {
            return .builtinStream
        } else if executor.hasPrefix("exec:") {
            let words = try Self.words(String(executor.dropFirst(5)), in: text)
            guard let command = words.first, !command.isEmpty else { throw ParseError(description: "'\(text)': exec: needs a command") }
            return .exec(command: command, arguments: Array(words.dropFirst()))
        } else if executor.hasPrefix("http:") {
            let url = String(executor.dropFirst(5))
            guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                // NAME=http://host/run: the executor's kind was left out, and "http:" was read as it.
                let hint = url.hasPrefix("//") ? " (the executor is http: and then the URL: NAME=http:http\(url))" : ""
                throw ParseError(description: "'\(text)': http: needs a URL such as http://127.0.0.1:8080/run\(hint)")
            }
            if let problem = Self.authorityProblem(url) { throw ParseError(description: "'\(text)': \(problem)") }
            return .http(url: url)
        } else {
            throw ParseError(description: "'\(executor)' is not an executor: use builtin:echo, builtin:stream, exec:COMMAND or http:URL")
        }
    }

    /// What is wrong with an http(s) URL's host and port, checked at start-up rather than at the first task: a host
    /// is needed, and a port, if the colon is there, is 1 to 65535.
    private static func authorityProblem(_ url: String) -> String? {
        let rest = url.drop { $0 != "/" }.dropFirst(2)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let hostAndPort = authority.split(separator: "@", omittingEmptySubsequences: false).last ?? authority
        let host: Substring
        let port: Substring?
        if hostAndPort.hasPrefix("[") {
            guard let close = hostAndPort.firstIndex(of: "]") else { return "the IPv6 address in the URL lacks its ']'" }
            host = hostAndPort[hostAndPort.index(after: hostAndPort.startIndex)..<close]
            let after = hostAndPort[hostAndPort.index(after: close)...]
            guard after.isEmpty || after.hasPrefix(":") else { return "the URL has text after its IPv6 address" }
            port = after.isEmpty ? nil : after.dropFirst()
        } else if let colon = hostAndPort.lastIndex(of: ":") {
            host = hostAndPort[..<colon]
            port = hostAndPort[hostAndPort.index(after: colon)...]
        } else {
            (host, port) = (hostAndPort, nil)
        }
        guard !host.isEmpty else { return "the URL has no host" }
        if let port {
            guard port.allSatisfy({ ("0"..."9").contains($0) }), let number = Int(port), (1...65_535).contains(number) else {
                return "the URL's port must be 1 to 65535" + (port.isEmpty ? " (it is empty)" : ", not '\(port)'")
            }
        }
        return nil
    }
}
