import Testing
import KmsfsKit

@Suite struct MountInfoTests {
    @Test func everyEscapeTheKernelWritesIsDecoded() {
        #expect(MountInfo.unescape("/etc/my\\040secrets") == "/etc/my secrets")
        #expect(MountInfo.unescape("/a\\011b\\012c\\134d") == "/a\tb\nc\\d")
        #expect(MountInfo.unescape("/plain") == "/plain")
        // Not escapes: short, not octal, over 255; kept as they are.
        #expect(MountInfo.unescape("/x\\04") == "/x\\04")
        #expect(MountInfo.unescape("/x\\09a") == "/x\\09a")
        #expect(MountInfo.unescape("/x\\777") == "/x\\777")
        #expect(MountInfo.unescape("\\") == "\\")
    }
}
