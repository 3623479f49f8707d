#!/usr/bin/env bash
# Runs every benchmark the issues ask for, one after the other, each with its
# own baseline measured in the same run, and prints their result lines.
# Needs redis-server on PATH. Takes a few minutes on a 2-core machine.
#   deploy/bench/run.sh            # all
#   deploy/bench/run.sh http       # one of: http batch store webhook relay policy
set -euo pipefail
cd "$(dirname "$0")/../.."
want=${1:-all}
run() { # name, package, bench regexp, extra args...
	local name=$1 pkg=$2 re=$3
	shift 3
	[[ $want == all || $want == "$name" ]] || return 0
	echo "== $name: go test -run '^\$' -bench '$re' $pkg $*"
	go test -run '^$' -bench "$re" "$pkg" "$@"
}
run http    ./guard/httpapi/  'BenchmarkCheckVsBaseline$' -benchtime 1x -args -cg.rounds=3 -cg.requests=30000
run batch   ./guard/httpapi/  'BenchmarkBatch10000Phones$' -benchtime 10x
run store   ./cache/          'Benchmark(BaselineHGET|LookupSingle|LookupBatch10000Phones|Apply100)$' -benchmem
run webhook ./webhook/        'BenchmarkOutbound100$' -benchtime 400x
run relay   ./guard/smtprelay/ 'BenchmarkRelayVsDirect$' -benchtime 1x
run policy  ./guard/policy/   'BenchmarkPolicy' -benchtime 100000x
