// Package compose holds the docker-compose project of deploy/compose and
// its test (compose_test.go, build tag docker: `make compose-test`). The
// init service's program is in init/.
package compose
