extension Duration {
    /// The duration in seconds, for logs, file formats and system calls that take a `Double`.
    package var seconds: Double {
        let (seconds, attoseconds) = self.components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
