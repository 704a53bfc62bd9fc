#!/bin/sh
# The images' entrypoint (run by tini, which forwards signals and reaps zombies).
#   serve [serving start flags...]   run the server in the foreground (the default command;
#                                    TorchServe's image takes the same word)
#   --any-flag ...                   the same: flags go to `serving start`
#   anything else                    run it (a shell, `serving archive`, `torchserve --start`)
# The config file: TS_CONFIG_FILE if set (as TorchServe), else --ts-config if given, else the
# image's /etc/serving/config.properties. The server replaces this shell (exec): SIGTERM from
# `docker stop` or Kubernetes reaches it directly, and it drains.
set -eu

DEFAULT_CONFIG=/etc/serving/config.properties

if [ "$#" -eq 0 ]; then
    set -- serve
elif [ "${1#-}" != "$1" ]; then
    set -- serve "$@"
fi

if [ "$1" = "serve" ]; then
    shift
    case " $* " in
        *" --ts-config "* | *" --ts-config="*) ;;
        *)
            if [ -z "${TS_CONFIG_FILE:-}" ]; then
                set -- --ts-config "$DEFAULT_CONFIG" "$@"
            fi
            ;;
    esac
    exec serving start --foreground "$@"
fi
exec "$@"
