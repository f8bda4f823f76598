/// The release, as `kmsfs --version`, the User-Agent of every AWS request,
/// `kmsfs status` and `kmsfs_build_info` show it. tools/deb.sh and
/// test_package.py read it from this line.
public let kmsfsVersion = "0.1.0"
