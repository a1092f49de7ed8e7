# Sourced by benchmarks/gpu_check.sh and benchmarks/gpu_stages.sh: Python packages for the lent GPU machine, whose
# image (CPython 3.12, x86-64; /work/.library/device/KINDS.md) has torch and transformers but reaches no index, so
# what it lacks travels as wheels in a git-excluded folder named in the device tool's `carry`.

# fetch_wheels DIR PIP_DOWNLOAD_ARGS...: DIR (emptied first) gets the image's kind of wheels of the named pins
fetch_wheels() {
  local dir=$1; shift
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@" || return 1
  # carried paths must be ignored by git; the workplace's own exclude file keeps .gitignore free of them
  grep -qxF "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
}

# use_wheels PYTHON DIR: DIR's wheels installed into /tmp/latlab-site, which goes first on PYTHONPATH
use_wheels() {
  local py=$1 dir=$2
  compgen -G "$dir/*.whl" >/dev/null || return 1
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/latlab-site \
    "$dir"/*.whl || return 1
  export PYTHONPATH=/tmp/latlab-site${PYTHONPATH:+:$PYTHONPATH}
}
