// Command benchreport runs the project's benchmarks and writes
// docs/BENCHMARKS.md from docs/BENCHMARKS.md.tmpl and their results, so that
// every figure in the report comes from one run of one command, `make bench`.
//
// Each benchmark's raw output is kept in docs/bench/<id>.txt: -only reruns
// some of them and takes the others' figures from their last run.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// A run is one `go test -bench` command; the template names it by id.
type run struct {
	ID, Dir, Bench, Benchtime string
	Env                       []string
}

var runs = []run{
	{ID: "switchover", Dir: ".", Bench: "Switchover(Manager|FailoverTo)", Benchtime: "20x"},
	{ID: "sentinel", Dir: ".", Bench: "SwitchoverSentinel", Benchtime: "5x"}, // about 20 s each
	{ID: "switchover-apiserver", Dir: "e2e", Bench: "SwitchoverAPIServer", Benchtime: "20x"},
	{ID: "config", Dir: ".", Bench: "LiveConfig", Benchtime: "50x"},
	{ID: "upgrade", Dir: ".", Bench: "UpgradeHandover", Benchtime: "30x"},
	{ID: "backup", Dir: ".", Bench: "BenchmarkBackup", Benchtime: "3x"},
	{ID: "throughput", Dir: ".", Bench: "RedisThroughput$", Benchtime: "1x"},
	{ID: "throughput-tls", Dir: ".", Bench: "RedisThroughputTLS", Benchtime: "1x"},
	{ID: "tls-renewal", Dir: "e2e", Bench: "TLSRenewal", Benchtime: "20x"},
	{ID: "users", Dir: "e2e", Bench: "UsersChange", Benchtime: "20x"},
	{ID: "fence", Dir: "e2e", Bench: "Fence", Benchtime: "20x"},
	{ID: "fence-local", Dir: ".", Bench: "FenceLocal", Benchtime: "20x"},
	{ID: "footprint", Dir: "e2e", Bench: "IdleFootprint", Benchtime: "3x"},
	{ID: "footprint-local", Dir: ".", Bench: "IdleFootprintLocal", Benchtime: "3x"},
	{ID: "fleet", Dir: "e2e", Bench: "Fleet", Benchtime: "1x"},
	{ID: "discovery", Dir: "e2e", Bench: "ClientSwitchover/manager", Benchtime: "20x"},
	{ID: "discovery-sentinel", Dir: "e2e", Bench: "ClientSwitchover/sentinel", Benchtime: "5x"}, // about 30 s each
	{ID: "subscribers", Dir: "e2e", Bench: "DiscoverySubscribers", Benchtime: "1x"},
}

// Cmd is the command as a reader would type it from the repository's root.
func (r run) Cmd() string {
	cmd := fmt.Sprintf("go test -run '^$' -bench '%s' -benchtime %s -timeout 60m .", r.Bench, r.Benchtime)
	if len(r.Env) > 0 {
		cmd = strings.Join(r.Env, " ") + " " + cmd
	}
	if r.Dir != "." {
		cmd = "cd " + r.Dir + " && " + cmd
	}
	return cmd
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func Run(ctx context.Context, args []string, progress io.Writer) error {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	root := fs.String("root", "..", "the repository's root")
	only := fs.String("only", "", "comma-separated ids of the benchmarks to run (default: all); the others' last results are reused")
	skip := fs.Bool("render-only", false, "run nothing: write the report from the kept results")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rawDir := filepath.Join(*root, "docs", "bench")
	if err := os.MkdirAll(rawDir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, id := range strings.Split(*only, ",") {
		if id = strings.TrimSpace(id); id != "" {
			want[id] = true
		}
	}
	for id := range want {
		if !slices.ContainsFunc(runs, func(r run) bool { return r.ID == id }) {
			return fmt.Errorf("-only: no benchmark %q", id)
		}
	}
	for _, r := range runs {
		if *skip || (len(want) > 0 && !want[r.ID]) {
			continue
		}
		fmt.Fprintf(progress, "==> %s: %s\n", r.ID, r.Cmd())
		out, err := execute(ctx, *root, r, progress)
		if err != nil {
			return fmt.Errorf("%s: %w", r.ID, err)
		}
		if err := os.WriteFile(filepath.Join(rawDir, r.ID+".txt"), out, 0o644); err != nil {
			return err
		}
	}
	rep := &report{Machine: describeMachine(), results: map[string][]result{}}
	var commits []string
	for _, r := range runs {
		raw, err := os.ReadFile(filepath.Join(rawDir, r.ID+".txt"))
		if err != nil {
			return fmt.Errorf("no result for %s: run it (-only %s): %w", r.ID, r.ID, err)
		}
		if _, c, ok := strings.Cut(string(raw), ", at commit "); ok {
			c, _, _ = strings.Cut(c, "\n")
			if !slices.Contains(commits, c) {
				commits = append(commits, c)
			}
		}
		rep.results[r.ID] = parse(raw)
		if len(rep.results[r.ID]) == 0 {
			return fmt.Errorf("%s: no benchmark result in %s", r.ID, filepath.Join(rawDir, r.ID+".txt"))
		}
	}
	rep.Machine += ", commit " + strings.Join(commits, " and ")
	return rep.render(filepath.Join(*root, "docs", "BENCHMARKS.md.tmpl"), filepath.Join(*root, "docs", "BENCHMARKS.md"))
}

// execute runs one benchmark command and returns its result lines with a
// header naming the command and when it ran. The API server's logs, which
// go test mixes into the output, stay out of what is kept.
func execute(ctx context.Context, root string, r run, progress io.Writer) ([]byte, error) {
	args := []string{"test", "-run", "^$", "-bench", r.Bench, "-benchtime", r.Benchtime, "-timeout", "60m", "."}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = filepath.Join(root, r.Dir)
	cmd.Env = append(os.Environ(), r.Env...)
	var all bytes.Buffer
	cmd.Stdout, cmd.Stderr = &all, &all
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		tail := all.Bytes()
		if len(tail) > 8000 {
			tail = tail[len(tail)-8000:]
		}
		return nil, fmt.Errorf("%w\n%s", err, tail)
	}
	var kept bytes.Buffer
	fmt.Fprintf(&kept, "# %s\n# ran %s, took %s, at commit %s\n", r.Cmd(), start.UTC().Format(time.RFC3339), time.Since(start).Round(time.Second),
		firstLine("git", "-C", root, "describe", "--always", "--dirty"))
	for _, res := range parse(all.Bytes()) {
		fmt.Fprintln(&kept, res.line())
		fmt.Fprintln(progress, "   ", res.line())
	}
	return kept.Bytes(), nil
}

// A result is one benchmark's line: its name, iterations and metrics.
type result struct {
	Name    string // without the -GOMAXPROCS suffix
	procs   string
	N       int
	metrics map[string]float64
	units   []string
}

func (r result) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s%s\t%d", r.Name, r.procs, r.N)
	for _, u := range r.units {
		fmt.Fprintf(&b, "\t%s %s", strconv.FormatFloat(r.metrics[u], 'f', -1, 64), u)
	}
	return b.String()
}

// parse reads go test's benchmark lines. Other output may come between a
// benchmark's name and its figures (the API server logs as it starts), so
// a name waits for the next line that holds figures.
func parse(out []byte) []result {
	var res []result
	pending := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "Benchmark") {
			pending = strings.Fields(line)[0]
			_, line, _ = strings.Cut(line, "\t")
		}
		if pending == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 || len(f)%2 == 0 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		r := result{N: n, metrics: map[string]float64{}}
		r.Name, r.procs = pending, ""
		if i := strings.LastIndex(pending, "-"); i > 0 {
			if _, err := strconv.Atoi(pending[i+1:]); err == nil {
				r.Name, r.procs = pending[:i], pending[i:]
			}
		}
		good := true
		for i := 1; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				good = false
				break
			}
			r.metrics[f[i+1]] = v
			r.units = append(r.units, f[i+1])
		}
		if good {
			res = append(res, r)
			pending = ""
		}
	}
	return res
}

type report struct {
	Machine string
	results map[string][]result
}

func (rep *report) find(id, name string) (result, error) {
	for _, r := range rep.results[id] {
		if r.Name == name || r.Name == "Benchmark"+name {
			return r, nil
		}
	}
	return result{}, fmt.Errorf("no result %s in %s", name, id)
}

func (rep *report) render(tmplPath, outPath string) error {
	funcs := template.FuncMap{
		// m is one figure of one benchmark.
		"m": func(id, name, unit string) (float64, error) {
			r, err := rep.find(id, name)
			if err != nil {
				return 0, err
			}
			v, ok := r.metrics[unit]
			if !ok {
				return 0, fmt.Errorf("%s in %s has no %q", name, id, unit)
			}
			return v, nil
		},
		// n is how many times a benchmark ran its operation.
		"n": func(id, name string) (int, error) {
			r, err := rep.find(id, name)
			return r.N, err
		},
		// raw is the result lines of a run, as go test printed them.
		"raw": func(id string) string {
			var b strings.Builder
			for _, r := range rep.results[id] {
				b.WriteString(r.line() + "\n")
			}
			return strings.TrimRight(b.String(), "\n")
		},
		"cmd": func(id string) (string, error) {
			for _, r := range runs {
				if r.ID == id {
					return r.Cmd(), nil
				}
			}
			return "", fmt.Errorf("no run %q", id)
		},
		"results": func(id string) []result { return rep.results[id] },
		"get": func(r result, unit string) (float64, error) {
			v, ok := r.metrics[unit]
			if !ok {
				return 0, fmt.Errorf("%s has no %q", r.Name, unit)
			}
			return v, nil
		},
		"f":   figure,
		"div": func(a, b float64) float64 { return a / b },
		"sub": func(a, b float64) float64 { return a - b },
		"mul": func(a, b float64) float64 { return a * b },
		// fit is the least-squares line through (x, y) of every result of
		// a run, evaluated at at: what the measured sizes predict.
		"fit": func(id, x, y string, at float64) (float64, error) {
			var xs, ys []float64
			for _, r := range rep.results[id] {
				xs, ys = append(xs, r.metrics[x]), append(ys, r.metrics[y])
			}
			if len(xs) < 2 {
				return 0, fmt.Errorf("fit needs two sizes in %s, has %d", id, len(xs))
			}
			a, b := leastSquares(xs, ys)
			return a + b*at, nil
		},
	}
	t, err := template.New(filepath.Base(tmplPath)).Funcs(funcs).Option("missingkey=error").ParseFiles(tmplPath)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := t.Execute(&out, rep); err != nil {
		return err
	}
	return os.WriteFile(outPath, out.Bytes(), 0o644)
}

// figure prints a measure with three significant digits, as a reader
// compares them; more would claim a precision no run on a shared machine has.
func figure(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 1000:
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	default:
		return strconv.FormatFloat(v, 'f', max(0, 2-int(math.Floor(math.Log10(a)))), 64)
	}
}

func leastSquares(xs, ys []float64) (a, b float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(xs))
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	b = (n*sxy - sx*sy) / (n*sxx - sx*sx)
	return (sy - b*sx) / n, b
}

// describeMachine is what a reader needs to compare figures with their own.
func describeMachine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%f", &kb)
		mem = fmt.Sprintf(", %.0f GiB", kb/(1<<20))
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	redis := strings.Fields(firstLine("redis-server", "--version"))
	redis = redis[:min(3, len(redis))] // "Redis server v=7.0.15", without the build's hashes
	return fmt.Sprintf("%d cores (%s)%s, Linux %s, %s, %s",
		runtime.NumCPU(), model, mem, strings.TrimSpace(string(kernel)), strings.Join(redis, " "), runtime.Version())
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return name + ": " + err.Error()
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}
