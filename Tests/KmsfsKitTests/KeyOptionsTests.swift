import Testing
import KmsfsKit
import KMS

/// Issue 13 A3/A4: `max_encrypted_data_keys=` and `kms_key=`.
@Suite struct KeyOptionsTests {
    let keyA = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

    @Test func kmsKeyTakesPlusSeparatedKeysAndAccumulates() throws {
        let o = try MountOptions.parse(["kms_key=\(keyA)+alias/app", "region=eu-west-1,kms_key=arn:aws:kms:eu-west-1:111122223333:alias/db"])
        #expect(o.kmsKeys.entries == [.keyARN(keyA), .aliasName("alias/app"), .aliasARN("arn:aws:kms:eu-west-1:111122223333:alias/db")])
        #expect(try MountOptions.parse([]).kmsKeys.isEmpty)
    }

    @Test func kmsKeySyntaxIsCheckedWithOneLine() {
        let cases: [(String, String)] = [
            ("kms_key=", "option 'kms_key' needs a value (kms_key=...)"),
            ("kms_key=1234abcd-12ab-34cd-56ef-1234567890ab",
             "option 'kms_key=1234abcd-12ab-34cd-56ef-1234567890ab': '1234abcd-12ab-34cd-56ef-1234567890ab' is neither a key ARN, an alias ARN nor alias/NAME (a bare key ID would name that key in any account: give its ARN)"),
            ("kms_key=alias/a+", "option 'kms_key=alias/a+': an empty entry; separate keys with '+'"),
        ]
        for (text, message) in cases {
            do { _ = try MountOptions.parse([text]); Issue.record("accepted \(text)") } catch {
                #expect(error.message == message)
                #expect(!error.message.contains("\n"))
            }
        }
    }

    @Test func maxEncryptedDataKeysHasARange() throws {
        #expect(try MountOptions.parse([]).maxEncryptedDataKeys == 10)
        #expect(try MountOptions.parse(["max_encrypted_data_keys=1"]).maxEncryptedDataKeys == 1)
        #expect(try MountOptions.parse(["max_encrypted_data_keys=100"]).maxEncryptedDataKeys == 100)
        for bad in ["0", "101", "65535", "-1", "1e3", "ten"] {
            #expect(throws: OptionError.self) { try MountOptions.parse(["max_encrypted_data_keys=" + bad]) }
        }
    }

    @Test func neitherChangesOnALiveMount() throws {
        let current = ["region=eu-west-1,kms_key=\(keyA)"]
        for change in ["kms_key=alias/other", "max_encrypted_data_keys=20"] {
            do { _ = try MountOptions.remounted(current, with: ["remount," + change]); Issue.record("accepted \(change)") } catch {
                let name = String(change.prefix { $0 != "=" })
                #expect(error.message == "option '\(name)' cannot change on a live mount (nothing was changed); unmount and mount again to change it")
            }
        }
        // Naming the same list again is no change.
        #expect(try MountOptions.remounted(current, with: ["remount,kms_key=\(keyA),ttl=1h"]).options.kmsKeys.keyARNs == [keyA])
    }
}
