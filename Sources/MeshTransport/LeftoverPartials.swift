import MeshCore

/// The partial files of transfers from each peer that stopped before their last byte (the peer went away, or the
/// store filled), kept so a later pull can resume: at most `share` bytes per peer, the oldest let go first. One
/// executor could otherwise leave the submitter's disk full of partial files for the hour they live, one failed
/// transfer at a time. (A transfer whose bytes failed their digest drops its partial at once.)
struct LeftoverPartials {
    private var byPeer: [NodeID: [(hex: String, bytes: UInt64)]] = [:]

    /// A transfer from `peer` stopped with `bytes` kept; returns the partials (by artifact) to let go now.
    mutating func stopped(_ hex: String, bytes: UInt64, from peer: NodeID, share: UInt64) -> [String] {
        self.resumed(hex)
        guard bytes > 0 else { return [] }
        var partials = self.byPeer[peer, default: []]
        partials.append((hex, bytes))
        var total = partials.reduce(0) { $0 + $1.bytes }
        var dropped: [String] = []
        while total > share, let oldest = partials.first {
            partials.removeFirst()
            total -= oldest.bytes
            dropped.append(oldest.hex)
        }
        self.byPeer[peer] = partials.isEmpty ? nil : partials
        return dropped
    }

    /// A new pull of the artifact goes on from its partial: it is no longer left over.
    mutating func resumed(_ hex: String) {
        for (peer, partials) in self.byPeer where partials.contains(where: { $0.hex == hex }) {
            let left = partials.filter { $0.hex != hex }
            self.byPeer[peer] = left.isEmpty ? nil : left
        }
    }

    func bytes(from peer: NodeID) -> UInt64 { self.byPeer[peer]?.reduce(0) { $0 + $1.bytes } ?? 0 }
}
