package generator_test

import (
	"fmt"

	"github.com/powerhouse/powerhouse/config"
	"github.com/powerhouse/powerhouse/generator"
)

func ExampleGenerate() {
	c, _ := config.Parse("/etc/powerhouse/powerhouse.toml", []byte(`
[[worker]]
name   = "web"
exec   = "/usr/local/bin/app"
sticky = true
listen = [9999]
`))
	units, _ := generator.Generate(c, generator.Options{Binary: "/usr/bin/powerhouse", ConfigPath: c.File})
	for _, u := range units {
		fmt.Println(u.Name)
	}
	// Output:
	// powerhouse.target
	// powerhouse@.service
	// powerhouse@web.socket
	// powerhouse-web@.service
	// powerhouse-web.b@.service
	// powerhouse-web@.socket
}

func ExampleExecLine() {
	fmt.Println(generator.ExecLine([]string{"/bin/app", "two words", "50%", "$HOME", ";"}))
	// Output: /bin/app "two words" 50%% $$HOME \;
}
