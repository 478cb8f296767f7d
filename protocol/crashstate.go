package protocol

// CrashStateErrorSerial is the serial of a crash disk (SPEC crashstates=)
// after the guest asked for a state flushvm could not build (an index past
// the batch, a state its write log cannot back). Until the guest asks for
// another state the disk then fails every read and write, so a checker
// that does not wait for CrashStateSerial(I) checks nothing rather than the
// wrong disk.
const CrashStateErrorSerial = "crashstate-error"
