# Sourced by benches/speed.sh and benches/gpt2.sh: a temporary directory `$tmp` (removed on exit)
# holding a throwaway virtual environment with NumPy (`$py`), and `peak`, which runs a command
# under GNU time (wall seconds and peak resident set size, into "$tmp/time.txt" so the command's
# own output and exit status pass through untouched) and `peak_of`, which prints them.
# Nothing is installed on the machine.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check numpy
py="$tmp/venv/bin/python"
peak() { /usr/bin/time -f "%e %M" -o "$tmp/time.txt" "$@"; }
peak_of() { cat "$tmp/time.txt"; }
