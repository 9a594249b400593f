# Stage handling shared by the recipes (source it from a recipe's run.sh):
#
#   stage=0 stop_stage=N                # defaults, set by the recipe before parsing
#   parse_options "$@"                  # --stage/--stop-stage/--help here, the rest via recipe_option
#   run_stage N NAME MARKER_DIR FUNC    # FUNC unless N is out of range or MARKER_DIR/.done-NAME exists
#
# The recipe defines recipe_option OPTION VALUE (return 1 for an unknown option) and starts with
# a comment block that --help prints. A stage writes its done-marker only when FUNC succeeds,
# so a killed stage runs again; the Python commands behind each stage resume their own work.

parse_options() {
  while [ $# -gt 0 ]; do
    case $1 in
      --stage) stage=$2 ;;
      --stop-stage) stop_stage=$2 ;;
      -h|--help) sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
      *)
        if [ $# -lt 2 ] || ! recipe_option "$1" "$2"; then
          echo "unknown option or missing value: $1 (see --help)" >&2
          exit 2
        fi ;;
    esac
    shift 2
  done
}

run_stage() {
  local n=$1 name=$2 marker="$3/.done-$2" fn=$4
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 0; fi
  if [ -f "$marker" ]; then
    echo "== stage $n ($name): done already ($marker), skipping"
    return 0
  fi
  echo "== stage $n ($name)"
  local start=$SECONDS
  "$fn"
  mkdir -p "$(dirname "$marker")"
  touch "$marker"
  echo "== stage $n ($name): finished in $((SECONDS - start)) s"
}
