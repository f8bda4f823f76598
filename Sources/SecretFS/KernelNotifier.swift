/// What the filesystem tells the kernel when SOURCE changes under it
/// (SecretFileSystem.sourceChanged calls it; FUSEBridge's session is the
/// one implementation, over fuse_lowlevel_notify_inval_*).
public protocol KernelNotifier: AnyObject, Sendable {
    /// A name in a directory changed (added, removed, replaced).
    func invalidateEntry(parent: UInt64, name: String)
    /// An inode's attributes (size, times) changed.
    func invalidateInode(_ ino: UInt64)
}
