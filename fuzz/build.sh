#!/bin/sh
# Builds the libFuzzer targets in fuzz/targets into $FUZZ_BUILD (default
# .build-fuzz): the library modules are compiled straight from Sources/
# with swiftc (coverage + AddressSanitizer, -enable-testing so a target may
# reach internal parsers), one object per module, then each target links
# them with libFuzzer's main. SwiftPM is not used: it cannot build a
# -sanitize=fuzzer executable without a main of its own.
#   fuzz/build.sh            all targets
#   fuzz/build.sh json esdk  only these
set -eu
cd "$(dirname "$0")/.."
PATH=/opt/swift/usr/bin:$PATH
OUT=${FUZZ_BUILD:-.build-fuzz}
SAN=${FUZZ_SANITIZE:-fuzzer,address}
mkdir -p "$OUT/modules" "$OUT/bin"

CFLAGS="-I Sources/CLinux/include -I Sources/CFuse/include -I Sources/CCurl/include -I Sources/CCrypto/include"
for f in $(pkg-config --cflags-only-I fuse3 libcurl openssl); do CFLAGS="$CFLAGS -Xcc $f"; done
LIBS=$(pkg-config --libs fuse3 libcurl openssl)
COMMON="-swift-version 6 -O -g -enable-testing -sanitize=$SAN -I $OUT/modules $CFLAGS"

# The C shims: a header or two and a shim.c each (CLinux's with no library
# under it), rebuilt, with their importers after them, when any of their
# files changes.
mkdir -p "$OUT/c"
for c in CLinux: CFuse:fuse3 CCurl:libcurl CCrypto:openssl; do
    m=${c%%:*}; pc=${c#*:}
    if [ ! -f "$OUT/c/$m.o" ] || [ -n "$(find Sources/$m -type f -newer "$OUT/c/$m.o")" ]; then
        echo "fuzz/build.sh: module $m" >&2
        clang -O1 -g ${pc:+$(pkg-config --cflags $pc)} -I Sources/$m/include -c Sources/$m/shim.c -o "$OUT/c/$m.o"
    fi
done
# Dependency order (Package.swift); each module rebuilt only when one of
# its sources or a module below it is newer than its object.
prev="$OUT/c/CLinux.o"
for m in System SecureMemory Log AWS KMS SecretFS FUSEBridge KmsfsKit; do
    obj="$OUT/modules/$m.o"
    srcs=$(ls Sources/$m/*.swift)
    [ $m = AWS ] && prev="$prev $OUT/c/CCurl.o $OUT/c/CCrypto.o"
    [ $m = FUSEBridge ] && prev="$prev $OUT/c/CFuse.o"
    stale=no
    [ -f "$obj" ] || stale=yes
    for s in $srcs $prev; do [ "$s" -nt "$obj" ] && stale=yes; done
    if [ $stale = yes ]; then
        echo "fuzz/build.sh: module $m" >&2
        swiftc $COMMON -parse-as-library -wmo -module-name "$m" -package-name kmsfs \
            -emit-module -emit-module-path "$OUT/modules/$m.swiftmodule" -c -o "$obj" $srcs
        # swiftc leaves an object whose bytes did not change untouched, and
        # an old time would rebuild the module on every run after.
        touch "$obj"
    fi
    prev="$prev $obj"
done

targets=${*:-$(cd fuzz/targets && ls *.swift | sed 's/\.swift$//')}
for t in $targets; do
    bin="$OUT/bin/fuzz-$t"
    if [ ! -f "$bin" ] || [ "fuzz/targets/$t.swift" -nt "$bin" ] || [ fuzz/Support.swift -nt "$bin" ] \
        || [ -n "$(find $OUT/modules $OUT/c -name '*.o' -newer "$bin")" ]; then
        echo "fuzz/build.sh: target $t" >&2
        swiftc $COMMON -parse-as-library -module-name "fuzz_$t" fuzz/Support.swift "fuzz/targets/$t.swift" \
            $OUT/modules/*.o "$OUT"/c/*.o $LIBS -use-ld=lld -o "$bin"
    fi
done
