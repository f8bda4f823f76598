// swift-tools-version:6.0
//
// kmsfs: a FUSE filesystem that serves KMS-encrypted secrets as plain,
// read-only files whose plaintext lives only in locked memory.
//
// Layering (each target imports only what is below it):
//
//   kmsfs (executable)            argument parsing, daemonizing
//   KmsfsKit                      mount options, configuration, wiring
//   FUSEBridge                    the thin libfuse adapter            -> CFuse
//   SecretFS                      the filesystem's meaning (no C)
//   KMS                           KMS API, ciphertext formats        -> CCrypto
//   AWS                           SigV4, credentials, HTTP, retries  -> CCurl, CCrypto
//   SecureMemory, Log             locked memory, hardening, logging
//   System                        errno, descriptors, clocks, sockets,
//                                 threads and waits                  -> CLinux
import PackageDescription

let package = Package(
    name: "kmsfs",
    products: [
        .executable(name: "kmsfs", targets: ["kmsfs"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C shims, one each, for macros and variadic calls, each a C target
        // so that its headers compile with diagnostics on and an edit
        // rebuilds its importers. CLinux is compiled (shim.c, with
        // _GNU_SOURCE, checking its mirrored structs).
        .target(name: "CLinux"),
        // libfuse3 (pkg-config's flags, -lfuse3), and CFuse: the shims over
        // it and the request loops, header-only C compiled as a target of
        // its own so that its diagnostics are on and an edit rebuilds
        // FUSEBridge.
        .systemLibrary(name: "CLibFuse", path: "Sources/CLibFuse", pkgConfig: "fuse3",
                       providers: [.apt(["libfuse3-dev"])]),
        .target(name: "CFuse", dependencies: ["CLibFuse"]),
        // libcurl and OpenSSL the same way: a system library each for the
        // flags, and a C target for the shims (CCurl's shim.c holds what
        // needs _GNU_SOURCE and curl's wiping allocator).
        .systemLibrary(name: "CLibCurl", path: "Sources/CLibCurl", pkgConfig: "libcurl",
                       providers: [.apt(["libcurl4-openssl-dev"])]),
        .target(name: "CCurl", dependencies: ["CLibCurl"]),
        .systemLibrary(name: "CLibCrypto", path: "Sources/CLibCrypto", pkgConfig: "openssl",
                       providers: [.apt(["libssl-dev"])]),
        .target(name: "CCrypto", dependencies: ["CLibCrypto"]),

        // The one door to the system: Errno, owned descriptors, clocks,
        // Unix sockets, threads and condition waits (swift-system's shape).
        .target(name: "System", dependencies: ["CLinux"]),
        .target(name: "SecureMemory", dependencies: ["System", "CLinux"]),
        .target(name: "Log", dependencies: ["System", "CLinux"]),
        .target(name: "AWS", dependencies: ["SecureMemory", "Log", "System", "CCurl", "CCrypto"]),
        .target(name: "KMS", dependencies: ["AWS", "SecureMemory", "CCrypto"]),
        .target(name: "SecretFS", dependencies: ["SecureMemory", "Log", "System"]),
        .target(name: "FUSEBridge", dependencies: ["SecretFS", "SecureMemory", "Log", "System", "CFuse"]),
        // Mount options, configuration resolution and the glue between KMS
        // and SecretFS: everything the executable does that deserves tests.
        .target(name: "KmsfsKit", dependencies: ["FUSEBridge", "SecretFS", "KMS", "AWS", "SecureMemory", "Log", "System"]),
        .executableTarget(
            name: "kmsfs",
            dependencies: [
                "KmsfsKit", "SecretFS", "KMS", "AWS", "SecureMemory", "Log", "System",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "SecureMemoryTests", dependencies: ["SecureMemory"]),
        .testTarget(name: "SystemTests", dependencies: ["System"]),
        .testTarget(name: "AWSTests", dependencies: ["AWS", "SecureMemory"]),
        .testTarget(name: "KMSTests", dependencies: ["KMS", "AWS", "SecureMemory"]),
        .testTarget(name: "SecretFSTests", dependencies: ["SecretFS", "SecureMemory"]),
        .testTarget(name: "KmsfsKitTests", dependencies: ["KmsfsKit", "SecretFS", "AWS", "FUSEBridge", "Log", "System", "SecureMemory"]),
        .testTarget(name: "LogTests", dependencies: ["Log", "System"]),
        .testTarget(name: "FUSEBridgeTests", dependencies: ["FUSEBridge", "CFuse"]),
    ],
    swiftLanguageModes: [.v6]
)

// Warnings are errors in kmsfs's own targets (not in its dependencies): a
// build that prints none stays that way, instead of a new one scrolling by
// unread. For the C shims most of all: their headers are included by every
// Swift importer, where nothing would show a mistake (an implicit
// declaration, a mismatched prototype) again. Each setting reaches only
// the targets in its language.
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-warnings-as-errors"])]
    target.cSettings = (target.cSettings ?? []) + [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]
}
