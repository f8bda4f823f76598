#if canImport(Glibc)
import System
import Glibc
#endif

/// Seconds since the Unix epoch, UTC, with sub-second precision where the
/// source has it.
public struct Timestamp: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var seconds: Double
    public init(seconds: Double) { self.seconds = seconds }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.seconds < b.seconds }
    public static func + (a: Timestamp, d: Double) -> Timestamp { Timestamp(seconds: a.seconds + d) }
    public static func - (a: Timestamp, b: Timestamp) -> Double { a.seconds - b.seconds }

    /// The wall clock now.
    public static func now() -> Timestamp { Timestamp(seconds: SystemClock.wall()) }

    private var tm: tm {
        // Clamped: a timestamp from a hostile document must not trap the
        // conversion (years 0001 to 9999 cover every real one).
        let clamped = seconds.isNaN ? 0 : min(max(seconds.rounded(.down), -62_135_596_800), 253_402_300_799)
        var t = time_t(clamped)
        var out = Glibc.tm()
        gmtime_r(&t, &out)
        return out
    }

    /// `20150830T123600Z`, the SigV4 `X-Amz-Date` form.
    public var amzDate: String {
        let t = tm
        return pad(Int(t.tm_year) + 1900, 4) + pad(Int(t.tm_mon) + 1, 2) + pad(Int(t.tm_mday), 2)
            + "T" + pad(Int(t.tm_hour), 2) + pad(Int(t.tm_min), 2) + pad(Int(t.tm_sec), 2) + "Z"
    }

    /// `20150830`, the SigV4 credential-scope date.
    public var amzDay: String { String(amzDate.prefix(8)) }

    /// `2015-08-30T12:36:00Z`.
    public var iso8601: String {
        let t = tm
        return pad(Int(t.tm_year) + 1900, 4) + "-" + pad(Int(t.tm_mon) + 1, 2) + "-" + pad(Int(t.tm_mday), 2)
            + "T" + pad(Int(t.tm_hour), 2) + ":" + pad(Int(t.tm_min), 2) + ":" + pad(Int(t.tm_sec), 2) + "Z"
    }

    public var description: String { iso8601 }

    /// Parses `2015-08-30T12:36:00Z`, `2015-08-30T12:36:00.123Z` and
    /// `2015-08-30T12:36:00+00:00` (the forms AWS services and credential
    /// sources emit; also `+0000`, `+00`, a space for the `T`, and no zone,
    /// read as UTC). Nothing else: a field out of range (month 13, 31
    /// April, 24:00, an offset past 23:59) or any byte after the zone
    /// makes it nil, where timegm would have carried it into another time.
    public static func parseISO8601(_ text: String) -> Timestamp? {
        let s = Array(text.utf8)
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= s.count else { return nil }
            var v = 0
            for i in from..<(from + len) {
                let c = s[i]
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            return v
        }
        func at(_ i: Int, _ c: Character) -> Bool { i < s.count && s[i] == c.asciiValue! }
        guard s.count >= 19, at(4, "-"), at(7, "-"), at(10, "T") || at(10, "t") || at(10, " "), at(13, ":"), at(16, ":"),
              let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2),
              let h = num(11, 2), let mi = num(14, 2), let se = num(17, 2) else { return nil }
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard (1...12).contains(mo), (1...days[mo - 1]).contains(d), h < 24, mi < 60, se <= 60 else { return nil }
        var i = 19
        var frac = 0.0
        if at(i, ".") {
            i += 1
            let first = i
            var scale = 0.1
            while i < s.count, s[i] >= 48, s[i] <= 57 { frac += Double(s[i] - 48) * scale; scale /= 10; i += 1 }
            guard i > first else { return nil }
        }
        var offset = 0
        if at(i, "Z") || at(i, "z") {
            i += 1
        } else if at(i, "+") || at(i, "-") {
            let sign = at(i, "+") ? 1 : -1
            guard let oh = num(i + 1, 2), oh < 24 else { return nil }
            i += 3
            var om = 0
            if at(i, ":") {
                guard let m = num(i + 1, 2) else { return nil }
                om = m
                i += 3
            } else if let m = num(i, 2) {
                om = m
                i += 2
            }
            guard om < 60 else { return nil }
            offset = sign * (oh * 3600 + om * 60)
        }
        guard i == s.count else { return nil }
        var t = Glibc.tm()
        t.tm_year = Int32(y - 1900); t.tm_mon = Int32(mo - 1); t.tm_mday = Int32(d)
        t.tm_hour = Int32(h); t.tm_min = Int32(mi); t.tm_sec = Int32(se)
        let epoch = timegm(&t)
        return Timestamp(seconds: Double(epoch - offset) + frac)
    }

    private func pad(_ v: Int, _ width: Int) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }
}

/// A source of time, injected so signing, expiry and backoff are testable.
public struct Clock: Sendable {
    public var now: @Sendable () -> Timestamp
    /// Monotonic seconds, for durations and deadlines.
    public var monotonic: @Sendable () -> Double
    public var sleep: @Sendable (Double) -> Void

    public init(now: @escaping @Sendable () -> Timestamp,
                monotonic: @escaping @Sendable () -> Double,
                sleep: @escaping @Sendable (Double) -> Void) {
        self.now = now
        self.monotonic = monotonic
        self.sleep = sleep
    }

    public static let system = Clock(
        now: { Timestamp.now() },
        monotonic: { SystemClock.monotonic() },
        sleep: { SystemClock.sleep($0) })
}

/// Whole milliseconds for a duration in seconds, for C APIs that take a
/// `long`: NaN and negatives are 0, anything past a day is a day
/// (`Int(Double)` traps out of range; a configured or received duration
/// must never reach it unchecked).
public func clampedMilliseconds(_ seconds: Double) -> Int {
    guard seconds.isFinite else { return seconds > 0 ? 86_400_000 : 0 }
    return Int(min(max(seconds, 0), 86_400) * 1000)
}

/// `Int(d)` for a count of seconds shown in a message, clamped.
public func displaySeconds(_ d: Double) -> Int {
    guard d.isFinite else { return d > 0 ? Int.max : 0 }
    return Int(exactly: d.rounded(.down)) ?? (d > 0 ? Int.max : Int.min)
}
