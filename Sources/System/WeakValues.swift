/// A dictionary whose values are held weakly: an entry lives as long as
/// something else holds its value. Entries whose value is gone are pruned
/// when the table has doubled since the last prune, so it stays within
/// twice the live entries (and at least 64).
public struct WeakValues<Key: Hashable, Value: AnyObject> {
    private struct Box { weak var value: Value? }
    private var storage: [Key: Box] = [:]
    private var pruneAt = 64

    public init() {}

    /// The live value for `key`; setting nil removes it.
    public subscript(key: Key) -> Value? {
        get { storage[key]?.value }
        set {
            guard let newValue else { storage[key] = nil; return }
            storage[key] = Box(value: newValue)
            if storage.count > pruneAt {
                storage = storage.filter { $0.value.value != nil }
                pruneAt = max(64, storage.count * 2)
            }
        }
    }

    /// Removes `key`'s entry; its value, if still live.
    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        storage.removeValue(forKey: key)?.value
    }

    /// Removes the entries whose key matches.
    public mutating func removeAll(where match: (Key) -> Bool) {
        storage = storage.filter { !match($0.key) }
    }

    public mutating func removeAll() { storage.removeAll() }

    /// Entries kept, dead ones not yet pruned included (tests).
    var storedCount: Int { storage.count }
}
