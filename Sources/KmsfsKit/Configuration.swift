import SecretFS
import AWS

/// Turns parsed options into the filesystem's configuration, resolving
/// user and group names now (at mount and on every SIGHUP).
public enum Configuration {
    /// `watched`: SOURCE is followed with inotify, so the kernel may cache
    /// names longer (every change is invalidated as it happens).
    public static func filesystem(_ o: MountOptions, watched: Bool = false) throws(OptionError) -> FSConfiguration {
        let uids: Set<UInt32>
        let gids: Set<UInt32>
        do {
            uids = try PrincipalResolver.uids(o.allowUsers)
            gids = try PrincipalResolver.gids(o.allowGroups)
        } catch {
            throw OptionError("allow_uid=/allow_gid=: \(error.message); use a user or group that exists, or its number")
        }
        var shownUid: UInt32 = 0
        var shownGid: UInt32 = 0
        var derivedGroup = false
        do {
            if let u = o.uid { shownUid = try PrincipalResolver.uid(u) } else if uids.count == 1 { shownUid = uids.first! }
            if let g = o.gid { shownGid = try PrincipalResolver.gid(g) } else if gids.count == 1 { shownGid = gids.first!; derivedGroup = true }
        } catch {
            throw OptionError("uid=/gid=: \(error.message); use a user or group that exists, or its number")
        }
        let mode = o.mode ?? ((derivedGroup || o.gid != nil) && !gids.isEmpty ? 0o440 : 0o400)
        var rules: [AccessRule] = []
        if let file = o.policyFile {
            do {
                rules = try PolicyFile.load(path: file)
            } catch {
                throw OptionError(error.description)
            }
        }
        let policy = AccessPolicy(defaultPrincipals: Principals(uids: uids, gids: gids, units: Set(o.allowUnits)), rules: rules,
                                  defaultPresentation: Presentation(uid: shownUid, gid: shownGid, mode: mode))
        var c = FSConfiguration(policy: policy,
                                cache: .init(ttl: o.ttl, maxBytes: o.cacheMaxBytes, staleWindow: o.staleWindow))
        c.maxCiphertextBytes = o.maxCiphertextBytes
        if let d = o.dirMode { c.directoryMode = d }
        if watched { c.entryTimeout = 10 }
        // c.secretAttributeTimeout stays 0: a secret's size depends on who asks.
        return c
    }
}
