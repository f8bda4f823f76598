// kmsfs: serves KMS-encrypted secrets as plain, read-only files.
// Everything happens in the commands (Commands.swift) and KmsfsKit; this
// file only makes sure a crash can print no memory and TLS keys are never
// written out, then dispatches.
import SecureMemory
#if canImport(Glibc)
import Glibc
#endif

ProcessHardening.openClosedStandardDescriptors()
ProcessHardening.disableCrashReporter()
ProcessHardening.resetInheritedSignals()
// libcurl writes every TLS session's keys to $SSLKEYLOGFILE (read once, at
// curl_global_init): with them and a capture of the traffic, anyone could
// read each Decrypt's plaintext and the session token. Unset while the
// process is still one thread, before curl starts; helpers (credential_process)
// do not inherit it either.
unsetenv("SSLKEYLOGFILE")
KmsfsCommand.main()
