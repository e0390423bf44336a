// The NATS anchors of scripts/bench, measured with the official Go client (nats.go, from Debian's
// golang-github-nats-io-go-nats-dev, built in GOPATH mode by scripts/bench):
//
//	natsbench core-responder URL                                 answers requests on "echo" with their payload
//	natsbench core URL REQUESTS CONCURRENCY PAYLOAD WARMUP       request-reply through nats-server
//	natsbench jetstream-worker URL WORKERS                       a work queue: pull "tasks", reply, then ack
//	natsbench jetstream URL REQUESTS CONCURRENCY PAYLOAD WARMUP  publish a task (acknowledged once the file store
//	                                                             has it), wait for the worker's reply
//
// The load commands print one JSON document in the shape of `agentmesh bench --json`.
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

func fail(format string, arguments ...interface{}) {
	fmt.Fprintf(os.Stderr, "natsbench: "+format+"\n", arguments...)
	os.Exit(1)
}

func number(text string) int {
	value, err := strconv.Atoi(text)
	if err != nil {
		fail("%q is not a number", text)
	}
	return value
}

func connect(url string) *nats.Conn {
	connection, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		fail("cannot connect to %s: %v", url, err)
	}
	return connection
}

type percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

type report struct {
	Requests            int         `json:"requests"`
	Failures            int         `json:"failures"`
	Concurrency         int         `json:"concurrency"`
	PayloadBytes        int         `json:"payload_bytes"`
	Seconds             float64     `json:"seconds"`
	RequestsPerSecond   float64     `json:"requests_per_second"`
	LatencyMicroseconds percentiles `json:"latency_microseconds"`
}

// Exact percentiles (nearest rank), as `agentmesh bench` computes them.
func summarise(samples []time.Duration) percentiles {
	sorted := make([]float64, len(samples))
	sum := 0.0
	for index, sample := range samples {
		sorted[index] = float64(sample.Nanoseconds()) / 1e3
		sum += sorted[index]
	}
	sort.Float64s(sorted)
	rank := func(fraction float64) float64 {
		if len(sorted) == 0 {
			return 0
		}
		index := int(math.Ceil(fraction*float64(len(sorted)))) - 1
		if index < 0 {
			index = 0
		}
		return sorted[index]
	}
	result := percentiles{P50: rank(0.5), P90: rank(0.9), P99: rank(0.99)}
	if len(sorted) > 0 {
		result.Max = sorted[len(sorted)-1]
		result.Mean = sum / float64(len(sorted))
	}
	return result
}

// Runs `requests` round trips over `concurrency` clients, each with one request in flight, after `warmup`.
func load(requests, concurrency, payload, warmup int, open func() func() error) {
	roundTrips := make([]func() error, concurrency)
	for index := range roundTrips {
		roundTrips[index] = open()
	}
	for index := 0; index < warmup; index++ {
		if err := roundTrips[index%concurrency](); err != nil {
			fail("warm-up: %v", err)
		}
	}
	var lock sync.Mutex
	issued := 0
	var samples []time.Duration
	var firstError error
	var group sync.WaitGroup
	started := time.Now()
	for _, roundTrip := range roundTrips {
		group.Add(1)
		go func(roundTrip func() error) {
			defer group.Done()
			var mine []time.Duration
			for {
				lock.Lock()
				if issued >= requests || firstError != nil {
					lock.Unlock()
					break
				}
				issued++
				lock.Unlock()
				sent := time.Now()
				if err := roundTrip(); err != nil {
					lock.Lock()
					firstError = err
					lock.Unlock()
					break
				}
				mine = append(mine, time.Since(sent))
			}
			lock.Lock()
			samples = append(samples, mine...)
			lock.Unlock()
		}(roundTrip)
	}
	group.Wait()
	elapsed := time.Since(started).Seconds()
	if firstError != nil {
		fail("%v", firstError)
	}
	document, _ := json.Marshal(report{
		Requests: len(samples), Concurrency: concurrency, PayloadBytes: payload, Seconds: elapsed,
		RequestsPerSecond: float64(len(samples)) / elapsed, LatencyMicroseconds: summarise(samples),
	})
	fmt.Println(string(document))
}

func body(payload int) []byte {
	data := make([]byte, payload)
	for index := range data {
		data[index] = 'x'
	}
	return data
}

func coreResponder(url string) {
	connection := connect(url)
	if _, err := connection.Subscribe("echo", func(message *nats.Msg) { message.Respond(message.Data) }); err != nil {
		fail("subscribe: %v", err)
	}
	connection.Flush()
	fmt.Println("ready")
	select {}
}

func core(url string, requests, concurrency, payload, warmup int) {
	data := body(payload)
	load(requests, concurrency, payload, warmup, func() func() error {
		connection := connect(url)
		return func() error {
			_, err := connection.Request("echo", data, 5*time.Second)
			return err
		}
	})
}

const stream = "TASKS"

// A file-backed work-queue stream: each task is delivered to one worker and removed once acknowledged.
func jetstreamWorker(url string, workers int) {
	connection := connect(url)
	js, err := connection.JetStream()
	if err != nil {
		fail("jetstream: %v", err)
	}
	js.DeleteStream(stream)
	if _, err := js.AddStream(&nats.StreamConfig{
		Name: stream, Subjects: []string{"tasks"}, Retention: nats.WorkQueuePolicy, Storage: nats.FileStorage,
	}); err != nil {
		fail("add stream: %v", err)
	}
	subscription, err := js.PullSubscribe("tasks", "workers", nats.AckExplicit())
	if err != nil {
		fail("pull subscribe: %v", err)
	}
	for index := 0; index < workers; index++ {
		go func() {
			for {
				messages, err := subscription.Fetch(1, nats.MaxWait(5*time.Second))
				if err != nil {
					continue // a fetch that timed out on an idle queue
				}
				for _, message := range messages {
					connection.Publish(message.Header.Get("Reply-To"), message.Data)
					message.Ack()
				}
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

func jetstream(url string, requests, concurrency, payload, warmup int) {
	data := body(payload)
	load(requests, concurrency, payload, warmup, func() func() error {
		connection := connect(url)
		js, err := connection.JetStream()
		if err != nil {
			fail("jetstream: %v", err)
		}
		inbox := nats.NewInbox()
		replies, err := connection.SubscribeSync(inbox)
		if err != nil {
			fail("subscribe: %v", err)
		}
		return func() error {
			task := nats.NewMsg("tasks")
			task.Header.Set("Reply-To", inbox)
			task.Data = data
			if _, err := js.PublishMsg(task); err != nil {
				return err
			}
			_, err := replies.NextMsg(5 * time.Second)
			return err
		}
	})
}

func main() {
	arguments := os.Args[1:]
	if len(arguments) < 2 {
		fail("usage: natsbench core-responder|core|jetstream-worker|jetstream URL ...")
	}
	switch {
	case arguments[0] == "core-responder":
		coreResponder(arguments[1])
	case arguments[0] == "jetstream-worker" && len(arguments) == 3:
		jetstreamWorker(arguments[1], number(arguments[2]))
	case (arguments[0] == "core" || arguments[0] == "jetstream") && len(arguments) == 6:
		requests, concurrency := number(arguments[2]), number(arguments[3])
		payload, warmup := number(arguments[4]), number(arguments[5])
		if arguments[0] == "core" {
			core(arguments[1], requests, concurrency, payload, warmup)
		} else {
			jetstream(arguments[1], requests, concurrency, payload, warmup)
		}
	default:
		fail("usage: natsbench core-responder|core|jetstream-worker|jetstream URL ...")
	}
}
