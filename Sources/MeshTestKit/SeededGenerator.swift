public import MeshCore

/// The tests' name for the seedable generator the core uses.
public typealias SeededGenerator = SplitMix64
