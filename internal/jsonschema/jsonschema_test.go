package jsonschema

import (
	"strings"
	"testing"
)

const testSchema = `{
  "type": "object",
  "required": ["status", "n"],
  "additionalProperties": false,
  "properties": {
    "status": {"type": "string", "enum": ["passed", "incomplete"]},
    "n": {"type": "integer", "minimum": 0},
    "x": {"type": ["number", "null"]},
    "list": {"type": "array", "items": {"type": "object", "required": ["a"], "properties": {"a": {"type": "boolean"}}}}
  }
}`

func TestValidate(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		doc  string
		want string // "" valid, else a substring of the first error
	}{
		{`{"status":"passed","n":3}`, ""},
		{`{"status":"passed","n":3,"x":1.5,"list":[{"a":true}]}`, ""},
		{`{"status":"passed","n":3,"x":null}`, ""},
		{`{"status":"PASS","n":3}`, "is not one of"},
		{`{"status":"passed"}`, `"n" is required`},
		{`{"status":"passed","n":-1}`, "below the minimum"},
		{`{"status":"passed","n":1.5}`, "want type integer"},
		{`{"status":"passed","n":1,"extra":1}`, `"extra" is not in the schema`},
		{`{"status":"passed","n":1,"list":[{}]}`, `$.list[0]: property "a" is required`},
		{`[]`, "want type object"},
		{`{`, "not JSON"},
	}
	for _, tc := range tests {
		errs := s.Validate([]byte(tc.doc))
		switch {
		case tc.want == "" && len(errs) > 0:
			t.Errorf("%s: %v, want valid", tc.doc, errs)
		case tc.want != "" && (len(errs) == 0 || !strings.Contains(errs[0], tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.doc, errs, tc.want)
		}
	}
}
