package main

import (
	"fmt"
	"image/color"
	"os"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// plotScale draws, against the chain count, each system's latency and its
// first process's CPU and memory, side by side, into a PNG.
func plotScale(path string, rows []scaleRow) error {
	lat := plot.New()
	lat.Title.Text = "sign latency"
	lat.X.Label.Text = "chains (one validator each, 1 block/s)"
	lat.Y.Label.Text = "ms (log scale)"
	// One stall of a shared machine would flatten every other point on a
	// linear axis.
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	res := plot.New()
	res.Title.Text = "leader (first process) resources"
	res.X.Label.Text = lat.X.Label.Text
	res.Y.Label.Text = "CPU % of one core / RSS MiB"
	palette := []color.RGBA{{0, 90, 200, 255}, {220, 60, 0, 255}, {0, 150, 0, 255}, {140, 0, 160, 255}}
	for si, sys := range systemsOf(rows) {
		series := []struct {
			p     *plot.Plot
			name  string
			value func(scaleRow) float64
		}{
			{lat, "p50", func(r scaleRow) float64 { return ms(r.lat.p50) }},
			{lat, "p99", func(r scaleRow) float64 { return ms(r.lat.p99) }},
			{res, "CPU %", func(r scaleRow) float64 { return 100 * first(r.cpu) }},
			{res, "RSS MiB", func(r scaleRow) float64 { return first(r.rss) }},
		}
		for i, s := range series {
			pts := make(plotter.XYs, len(sys))
			for j, r := range sys {
				pts[j].X, pts[j].Y = float64(r.chains), s.value(r)
			}
			l, p, err := plotter.NewLinePoints(pts)
			if err != nil {
				return err
			}
			c := palette[i%len(palette)]
			l.Color, p.Color = c, c
			if si > 0 {
				// Later systems (the baseline) dashed, in the same colours.
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
				p.Shape = draw.BoxGlyph{}
			}
			s.p.Add(l, p)
			s.p.Legend.Add(fmt.Sprintf("%s: %s", short(sys[0].system), s.name), l, p)
		}
	}
	for _, p := range []*plot.Plot{lat, res} {
		p.Legend.Top, p.Legend.Left = true, true
		p.Add(plotter.NewGrid())
	}
	res.Y.Min = 0
	img := vgimg.New(13*vg.Inch, 5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{{lat, res}}, tiles, dc)
	lat.Draw(canvases[0][0])
	res.Draw(canvases[0][1])
	return savePNG(img, path)
}

func first(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[0]
}

// short names a system in a legend.
func short(system string) string {
	if strings.HasPrefix(system, "file signer") {
		return "FilePV"
	}
	return system
}

func savePNG(img *vgimg.Canvas, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
