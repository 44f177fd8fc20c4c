# gnuplot script for docs/benchmarks.md (reload); bench/run.py runs it as
#   gnuplot -e "outdir='docs/bench'; spread=10; uniform=100; n=10000" bench/reload.gp
# reload.dat: per 100 ms bin since the SIGHUP (t_s), for the run with the
# spread and the run with spread 0: the reconnects that arrived (the
# client saw its connection end and connected again at once) and the
# connections open again.

if (!exists("outdir")) outdir = "docs/bench"

set terminal pngcairo size 1600,560 font "sans,10"
set output outdir."/reload.png"
set multiplot layout 1,2 title sprintf("ngx\\_ws\\_heartbeat: nginx -s reload with %d idle WebSocket connections, clients that reconnect at once", n)

set key top right
set grid ytics
set xlabel "seconds since the SIGHUP"
set ylabel "reconnects per 100 ms"
set xrange [0:*]
set yrange [0:*]
set offsets 0, 0, uniform, 0     # room above the 2x line
set title sprintf("ws\\_heartbeat\\_drain\\_spread %ds", spread)
plot outdir."/reload.dat" using 1:2 with steps lw 2 lc rgb "#228833" title "reconnect arrivals", \
     ''                   using 1:3 with steps lw 1 lc rgb "#4477aa" title "open again", \
     uniform with lines dt 2 lc rgb "#666666" title "uniform rate", \
     2 * uniform with lines dt 3 lc rgb "#ee6677" title "2x uniform (target: max bin below)"

set logscale y
set offsets 0, 0, 0, 0
set yrange [1:*]
set title "ws\\_heartbeat\\_drain\\_spread 0 (all at once), log scale"
plot outdir."/reload.dat" using 1:($4 > 0 ? $4 : NaN) with impulses lw 4 lc rgb "#ee6677" title "reconnect arrivals", \
     ''                   using ($1 + 0.03):($5 > 0 ? $5 : NaN) with impulses lw 2 lc rgb "#4477aa" title "open again", \
     uniform with lines dt 2 lc rgb "#666666" title sprintf("uniform rate over %d s", spread)
unset multiplot
