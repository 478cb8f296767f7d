// Package jsonschema checks a JSON document against the subset of JSON
// Schema (draft 2020-12) that flushvm's own schema files use: type,
// properties, required, additionalProperties: false, items, enum and
// minimum. It exists so tests can hold real outputs to the committed
// schemas without a dependency; it is not a general validator.
package jsonschema

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// Schema is one (sub)schema.
type Schema struct {
	Type                 any                `json:"type"`
	Properties           map[string]*Schema `json:"properties"`
	Required             []string           `json:"required"`
	AdditionalProperties *bool              `json:"additionalProperties"`
	Items                *Schema            `json:"items"`
	Enum                 []any              `json:"enum"`
	Minimum              *float64           `json:"minimum"`
}

// Parse reads a schema file's contents.
func Parse(b []byte) (*Schema, error) {
	var s Schema
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	return &s, nil
}

// Validate checks doc (JSON text) against s and returns every mismatch,
// each naming its JSON path.
func (s *Schema) Validate(doc []byte) []string {
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return []string{"not JSON: " + err.Error()}
	}
	var errs []string
	s.check("$", v, &errs)
	return errs
}

func (s *Schema) check(path string, v any, errs *[]string) {
	if !s.typeOK(v) {
		*errs = append(*errs, fmt.Sprintf("%s: %s, want type %v", path, typeOf(v), s.Type))
		return
	}
	if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e any) bool { return e == v }) {
		*errs = append(*errs, fmt.Sprintf("%s: %v is not one of %v", path, v, s.Enum))
	}
	if n, ok := v.(float64); ok && s.Minimum != nil && n < *s.Minimum {
		*errs = append(*errs, fmt.Sprintf("%s: %v below the minimum %v", path, n, *s.Minimum))
	}
	switch x := v.(type) {
	case map[string]any:
		s.checkObject(path, x, errs)
	case []any:
		if s.Items != nil {
			for i, e := range x {
				s.Items.check(fmt.Sprintf("%s[%d]", path, i), e, errs)
			}
		}
	}
}

func (s *Schema) checkObject(path string, x map[string]any, errs *[]string) {
	for _, r := range s.Required {
		if _, ok := x[r]; !ok {
			*errs = append(*errs, fmt.Sprintf("%s: property %q is required", path, r))
		}
	}
	keys := make([]string, 0, len(x))
	for k := range x {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if p, ok := s.Properties[k]; ok {
			p.check(path+"."+k, x[k], errs)
		} else if s.AdditionalProperties != nil && !*s.AdditionalProperties {
			*errs = append(*errs, fmt.Sprintf("%s: property %q is not in the schema", path, k))
		}
	}
}

// typeOK reports whether v has one of the schema's types (none: any).
func (s *Schema) typeOK(v any) bool {
	var types []string
	switch t := s.Type.(type) {
	case nil:
		return true
	case string:
		types = []string{t}
	case []any:
		for _, e := range t {
			types = append(types, fmt.Sprint(e))
		}
	}
	got := typeOf(v)
	for _, t := range types {
		if t == got || t == "number" && got == "integer" {
			return true
		}
	}
	return false
}

// typeOf is v's JSON Schema type.
func typeOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		if x == math.Trunc(x) {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return strings.ToLower(fmt.Sprintf("%T", v))
}
