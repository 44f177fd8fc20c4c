# gnuplot script for docs/benchmarks.md; bench/run.py runs it as
#   gnuplot -e "outdir='docs/bench'" bench/plot.gp
# relay.dat: per scenario, for A B C D L: ratio to A (median, min, max)
# of throughput (msg/s), or of p99 latency for the latency scenario.
# cpu.dat: the same layout, nginx worker CPU per message (ratio to A).
# latency.dat: per config, p50 / p99 / p999 latency (us) at a fixed rate.

if (!exists("outdir")) outdir = "docs/bench"

set terminal pngcairo size 2000,620 font "sans,10"
set output outdir."/relay.png"
set multiplot layout 1,3 title "ngx\\_ws\\_heartbeat: relay through nginx (same binary, same run, alternating configurations)"

set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key outside bottom center horizontal
set grid ytics
set yrange [0:1.5]
set ytics 0.1
set xtics rotate by -20 scale 0
set ylabel "ratio to A (throughput; p99 for the latency row)"
set title "msg/s relative to stock nginx (A = 1), median and min-max of rounds"
plot outdir."/relay.dat" using 2:3:4:xtic(1) title "A stock" lc rgb "#999999", \
     ''                  using 5:6:7 title "B loaded, off" lc rgb "#4477aa", \
     ''                  using 8:9:10 title "C heartbeat on" lc rgb "#228833", \
     ''                  using 11:12:13 title "D client+upstream" lc rgb "#ccbb44", \
     ''                  using 14:15:16 title "L Lua proxy" lc rgb "#ee6677"

set yrange [0:*]
set ytics 0.5
set ylabel "nginx worker CPU per message, ratio to A"
set title "worker CPU per message relative to A (lower is better)"
plot outdir."/cpu.dat" using 2:3:4:xtic(1) title "A stock" lc rgb "#999999", \
     ''               using 5:6:7 title "B loaded, off" lc rgb "#4477aa", \
     ''               using 8:9:10 title "C heartbeat on" lc rgb "#228833", \
     ''               using 11:12:13 title "D client+upstream" lc rgb "#ccbb44", \
     ''               using 14:15:16 title "L Lua proxy" lc rgb "#ee6677"

set style histogram clustered gap 1
set yrange [10:*]
set ytics auto
set xtics rotate by 0
set logscale y
set ylabel "latency (us), log scale"
set title "latency at 1000 msg/s, 100 connections, 64 B (median of rounds)"
plot outdir."/latency.dat" using 2:xtic(1) title "p50" lc rgb "#4477aa", \
     ''                    using 3 title "p99" lc rgb "#ee6677", \
     ''                    using 4 title "p99.9" lc rgb "#aa3377"
unset multiplot
