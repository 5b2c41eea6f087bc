-- wrk script: POST /v1/embeddings, one sentence per request, cycling through a JSONL file of
-- inputs (one JSON string per line, as `wattserve bench --save-inputs` writes them), so that a
-- response cache cannot answer for the engine.
-- Usage: WRK_INPUTS=inputs.jsonl WRK_MODEL=minilm-int8 wrk -s benches/load/embeddings.lua URL
local inputs = {}
local path = os.getenv("WRK_INPUTS") or "inputs.jsonl"
local model = os.getenv("WRK_MODEL") or "minilm-int8"
for line in io.lines(path) do
  if line:match("%S") then
    inputs[#inputs + 1] = line
  end
end
assert(#inputs > 0, "no inputs in " .. path)

local counter = 0
function setup(thread)
  -- Each wrk thread starts at a different place in the list.
  thread:set("offset", counter * 97)
  counter = counter + 1
end

local i = 0
function request()
  i = i + 1
  local text = inputs[((offset or 0) + i) % #inputs + 1]
  local body = '{"model":"' .. model .. '","input":' .. text .. '}'
  return wrk.format("POST", "/v1/embeddings", { ["Content-Type"] = "application/json" }, body)
end

local errors = 0
function response(status)
  if status ~= 200 then
    errors = errors + 1
  end
end
