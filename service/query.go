package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Query runs an IoT Hub query (POST /devices/query) and calls fn with every
// item of every page, in order, following x-ms-continuation until the hub
// omits it. pageSize > 0 asks for that many items per page
// (x-ms-max-item-count). fn returning ErrStopQuery ends the query with nil;
// any other error from fn is returned as is. Pages are retried on
// 429/500/503.
func (c *Client) Query(ctx context.Context, q string, pageSize int, fn func(json.RawMessage) error) error {
	body := struct {
		Query string `json:"query"`
	}{q}
	var cont string
	seen := map[string]bool{}
	for page := 1; ; page++ {
		h := map[string][]string{}
		if pageSize > 0 {
			h["X-Ms-Max-Item-Count"] = []string{strconv.Itoa(pageSize)}
		}
		if cont != "" {
			h["X-Ms-Continuation"] = []string{cont}
		}
		resp, err := c.do(ctx, request{method: "POST", path: "/devices/query", body: body, header: h, retry: true})
		if err != nil {
			return fmt.Errorf("query (page %d): %w", page, err)
		}
		var items []json.RawMessage
		if err := decode(resp, &items); err != nil {
			return fmt.Errorf("query (page %d): %w", page, err)
		}
		for _, it := range items {
			if err := fn(it); err != nil {
				if errors.Is(err, ErrStopQuery) {
					return nil
				}
				return err
			}
		}
		cont = resp.header.Get("X-Ms-Continuation")
		if cont == "" {
			return nil
		}
		if seen[cont] {
			return fmt.Errorf("query (page %d): the hub repeated continuation token %q", page, cont)
		}
		seen[cont] = true
	}
}
