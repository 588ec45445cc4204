"""python -m segfast info | bench [args] | check [--gpu] [args]"""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "info"
    if cmd == "info":
        import segfast

        segfast.info()
        return 0
    if cmd == "bench":
        from segfast.bench import main as bench_main

        return bench_main(argv[1:])
    if cmd == "check":
        from segfast.gpucheck.acceptance import main as check_main

        return check_main(argv[1:])
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
