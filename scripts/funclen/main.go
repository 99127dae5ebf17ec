// Command funclen reports non-generated Go files over -file lines (default
// 600) and non-test functions over -func lines (default 80), the limits of
// issue 14. It exits 1 when it reports anything.
//
//	go run ./scripts/funclen node transport keys internal
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	maxFn := flag.Int("func", 80, "max function lines")
	maxFile := flag.Int("file", 600, "max file lines")
	flag.Parse()
	bad := 0
	for _, root := range flag.Args() {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") {
				return err
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
			if err != nil {
				return err
			}
			if ast.IsGenerated(f) {
				return nil
			}
			if n := fset.File(f.Pos()).LineCount(); n > *maxFile {
				fmt.Printf("FILE %s: %d lines\n", p, n)
				bad++
			}
			if strings.HasSuffix(p, "_test.go") {
				return nil
			}
			ast.Inspect(f, func(n ast.Node) bool {
				var name string
				var body *ast.BlockStmt
				switch fn := n.(type) {
				case *ast.FuncDecl:
					name, body = fn.Name.Name, fn.Body
				case *ast.FuncLit:
					name, body = "func literal", fn.Body
				default:
					return true
				}
				if body == nil {
					return true
				}
				l := fset.Position(body.End()).Line - fset.Position(n.Pos()).Line + 1
				if l > *maxFn {
					fmt.Printf("FUNC %s:%d %s: %d lines\n", p, fset.Position(n.Pos()).Line, name, l)
					bad++
				}
				return true
			})
			return nil
		})
	}
	if bad > 0 {
		os.Exit(1)
	}
}
