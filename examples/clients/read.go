// Reads a secret key, a parameter and a whole path from sidekey with net/http.
// SIDEKEY_URL (default http://127.0.0.1:2773); token from SIDEKEY_TOKEN or AWS_TOKEN.
//
//	go run read.go
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

var client = &http.Client{Timeout: 5 * time.Second}

func get(route string, query url.Values, out any) error {
	base := os.Getenv("SIDEKEY_URL")
	if base == "" {
		base = "http://127.0.0.1:2773"
	}
	token := os.Getenv("SIDEKEY_TOKEN")
	if token == "" {
		token = os.Getenv("AWS_TOKEN")
	}
	req, err := http.NewRequest(http.MethodGet, base+route+"?"+query.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Aws-Parameters-Secrets-Token", token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: HTTP %d %s", route, resp.StatusCode, body)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func main() {
	var secret struct{ Value string }
	var param struct{ Parameter struct{ Value string } }
	var path map[string]string
	steps := []error{
		get("/secret", url.Values{"id": {"demo/db"}, "key": {"password"}}, &secret),
		get("/systemsmanager/parameters/get", url.Values{"name": {"/demo/app/url"}}, &param),
		get("/parameters", url.Values{"path": {"/demo/app"}, "recursive": {"true"}}, &path),
	}
	for _, err := range steps {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	fmt.Println("secret:", secret.Value)
	fmt.Println("parameter:", param.Parameter.Value)
	fmt.Println("path:", len(path), "parameters")
}
