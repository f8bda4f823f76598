// kmsfs: serves KMS-encrypted secrets as plain, read-only files.
// Everything happens in the commands (Commands.swift) and KmsfsKit; this
// file only makes sure a crash can print no memory, then dispatches.
import SecureMemory

ProcessHardening.disableCrashReporter()
KmsfsCommand.main()
