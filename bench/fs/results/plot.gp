set terminal pngcairo size 1400,1000 font ",10"
set output 'results.png'
set datafile missing '?'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.9 border rgb 'black'
set boxwidth 0.9
set logscale y
set format y '%g'
set grid ytics
set key outside right top vertical
set multiplot layout 2,1 title "ovlfs bench/fs: medians of 5; 2 CPUs, Linux 6.18.44-fc-v1272, ext4; 2026-12-06 21:57 UTC"
set arrow 1 from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 lc rgb 'black'
set title 'time relative to the plain directory (log scale, lower is better; dashed: plain)'
set yrange [2.96e-05:266]
plot 'ratios.dat' using 2:xtic(1) title 'kernel overlayfs' lc rgb '#9467bd', 'ratios.dat' using 3:xtic(1) title 'kernel overlayfs volatile' lc rgb '#c5b0d5', 'ratios.dat' using 4:xtic(1) title 'fuse-overlayfs' lc rgb '#ff7f0e', 'ratios.dat' using 5:xtic(1) title 'ovlfs' lc rgb '#1f77b4', 'ratios.dat' using 6:xtic(1) title 'ovlfs volatile' lc rgb '#9ecae1', 'ratios.dat' using 7:xtic(1) title 'fuse-overlayfs rootless' lc rgb '#ffbb78', 'ratios.dat' using 8:xtic(1) title 'ovlfs rootless' lc rgb '#2ca02c', 'ratios.dat' using 9:xtic(1) title 'ovlfs rootless volatile' lc rgb '#98df8a'
unset arrow 1
set title 'median time in seconds (log scale)'
set yrange [7.33e-06:21.4]
plot 'medians.dat' using 2:xtic(1) title 'plain directory' lc rgb '#7f7f7f', 'medians.dat' using 3:xtic(1) title 'kernel overlayfs' lc rgb '#9467bd', 'medians.dat' using 4:xtic(1) title 'kernel overlayfs volatile' lc rgb '#c5b0d5', 'medians.dat' using 5:xtic(1) title 'fuse-overlayfs' lc rgb '#ff7f0e', 'medians.dat' using 6:xtic(1) title 'ovlfs' lc rgb '#1f77b4', 'medians.dat' using 7:xtic(1) title 'ovlfs volatile' lc rgb '#9ecae1', 'medians.dat' using 8:xtic(1) title 'fuse-overlayfs rootless' lc rgb '#ffbb78', 'medians.dat' using 9:xtic(1) title 'ovlfs rootless' lc rgb '#2ca02c', 'medians.dat' using 10:xtic(1) title 'ovlfs rootless volatile' lc rgb '#98df8a'
unset multiplot
