package config_test

import (
	"fmt"

	"github.com/powerhouse/powerhouse/config"
)

func ExampleParse() {
	c, err := config.Parse("/etc/powerhouse/powerhouse.toml", []byte(`
[[worker]]
name   = "web"
exec   = "/usr/local/bin/app serve"
amount = 2
sticky = true
listen = [9999]
`))
	if err != nil {
		fmt.Println(err) // every problem, one per line: file:line: key: what is wrong
		return
	}
	w := c.Worker("web")
	fmt.Println(w.Exec, w.Amount, w.Listen[0].Address)
	// Output: [/usr/local/bin/app serve] 2 :9999
}
